"""The guide protocol: what every guide that the experiments train offers, as a :class:`typing.Protocol`.

:class:`TrainableGuide` is satisfied by every guide of :mod:`pyro_iterative.guides` (the learned guides through
:class:`~pyro_iterative.guides.base.LocalGuide`, variational EM through
:class:`~pyro_iterative.guides.per_datapoint.PerDatapointGuide`), so that training loops, evaluation and reports
call these members directly instead of probing for them. Checked at run time with ``isinstance``.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch

from ..inference.cost import ModelPasses
from ..inference.sites import SiteLayout

__all__ = [
    "TrainableGuide",
]


@runtime_checkable
class TrainableGuide(Protocol):
    """A Pyro guide whose local latents are inferred per datapoint, with the members the experiments rely on.

    Usage::

        guide = IterativeGuide(model)
        isinstance(guide, TrainableGuide)                # True
        guide.setup(x, subsample_size=64)                # build parameters before an optimizer or load_state_dict
        guide.inference_cost().total, guide.nonfinite_gradients, guide.count_inference_parameters()
        guide.elbo_trajectory(x_test).mean(1)            # mean ELBO at every lambda the guide visits

    :ivar model: the Pyro model the guide was built for.
    :ivar layout: the model's sites (``None`` until the guide has been set up).
    :ivar nonfinite_gradients: datapoint-iterations whose inner ELBO or its gradient was not finite (they kept
        their previous lambda); a checkpoint stores it, so that a resumed run keeps counting.
    """

    model: Callable
    layout: SiteLayout | None
    nonfinite_gradients: int

    def setup(self, *args, **kwargs) -> "TrainableGuide":
        """Discover the model's sites and build every parameter without running inference; returns the guide."""

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """Model (decoder) passes per datapoint this guide spends to produce q for a batch."""

    def elbo_trajectory(
        self, *args, num_iterations: int | None = None, num_particles: int | None = None, **kwargs
    ) -> torch.Tensor:
        """Per-datapoint ELBO at every lambda the guide visits, ``(number of lambdas, batch)``."""

    def count_inference_parameters(self) -> int:
        """Parameters the guide spends on inference: its networks' (or its stored q's), global sites excluded."""
