"""OptimizingGuide: q optimized from lambda_0 for every batch by a torch optimizer, with no inference network.

The test-time inference of variational EM (which learns no encoder, so new data need their own optimization),
as a :class:`~pyro_iterative.guides.base.LocalGuide`, so that it offers the same inspection and evaluation as
the learned guides. The optimization loop itself is :func:`~pyro_iterative.inference.optimize.optimize_lambda`.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..inference.batch import Batch
from ..inference.cost import ModelPasses
from ..inference.optimize import check_optimizer_settings, optimize_lambda
from ..inference.sites import SiteLayout
from .base import LocalGuide, Refinement

__all__ = [
    "OptimizingGuide",
]


class OptimizingGuide(LocalGuide):
    """A guide with no inference network: q is optimized from lambda_0 for every batch, at every call.

    Not meant to be trained (it has no parameters); use it to infer q on new data for a model trained with
    :class:`~pyro_iterative.guides.per_datapoint.PerDatapointGuide`, or as a reference optimizer.

    Usage::

        guide = OptimizingGuide(model, optimizer="adam", lr=0.05, num_steps=100)
        guide.elbo_trajectory(x_test)   # (num_steps + 1, batch)

    :param optimizer: a name from :data:`~pyro_iterative.inference.optimize.OPTIMIZERS`.
    :param lr: learning rate; default from :data:`~pyro_iterative.inference.optimize.DEFAULT_LEARNING_RATES`.
    :param num_steps: optimizer steps per call.
    :param kwargs: options of :class:`~pyro_iterative.guides.base.LocalGuide`.
    """

    def __init__(
        self, model: Callable, *, optimizer: str = "adam", lr: float | None = None, num_steps: int = 100, **kwargs
    ) -> None:
        check_optimizer_settings(optimizer, lr, num_steps, None)
        super().__init__(model, **kwargs)
        self.optimizer, self.lr, self.num_steps = optimizer, lr, num_steps

    def _setup_networks(self, layout: SiteLayout) -> None:
        self.register_buffer("_like", torch.zeros(()))  # no parameters: remember the dtype and device

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        # lambda takes the latents' dtype and device (a float64 model gets float64 lambda)
        self._like = self.prototype_trace.nodes[self.layout.local_sites[0].name]["value"].new_zeros(())

    def _parameter_like(self) -> torch.Tensor:
        return self._like

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """``num_steps`` forward and backward passes per datapoint (one more forward pass to read the masks of a
        model that masks local sites)."""
        steps = self.num_steps if num_iterations is None else num_iterations
        return ModelPasses(forward=steps + self._reads_masks_by_running_the_model(), backward=steps)

    def _refine(
        self,
        args: tuple,
        kwargs: dict,
        batch: Batch,
        global_values: dict[str, torch.Tensor],
        *,
        num_iterations: int | None = None,
        record: bool = False,
    ) -> Refinement:
        steps = self.num_steps if num_iterations is None else num_iterations
        result = optimize_lambda(
            self._inner_elbo, args, kwargs, batch, global_values, self._initial_lambda(len(batch)),
            optimizer=self.optimizer, lr=self.lr, num_steps=steps, record_path=record,
        )
        self.nonfinite_gradients += result.nonfinite_gradients
        return Refinement(lam=result.lam, elbos=list(result.trajectory[:-1]), path=result.path[:-1])
