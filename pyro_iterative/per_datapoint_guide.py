"""PerDatapointGuide: variational EM, q's parameters stored for every datapoint of the training set.

The paper's "SVI" baseline (Hoffman et al. 2013): no inference network; each datapoint owns its q,
optimized jointly with the model whenever its minibatch comes round. Pyro's own
:class:`~pyro.infer.autoguide.AutoNormal` already stores per-datapoint parameters indexed by the
plate's subsample indices; this module wraps it so that the data plate follows the model's own
subsampling and so that it offers the same inspection as the other guides. For datapoints it was
not trained on, use :func:`pyro_iterative.optimize_local`.
"""

from __future__ import annotations

from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_feasible

from .inner_elbo import locate_batch, per_datapoint_elbo
from .local_guide import ModelPasses
from .sites import SiteLayout, discover_sites

__all__ = [
    "PerDatapointGuide",
]


class PerDatapointGuide(AutoNormal):
    """Per-datapoint variational parameters (variational EM), as Pyro's ``AutoNormal`` with the model's plates.

    Every latent site gets a mean-field Normal in unconstrained space; those inside the data plate have
    one set of parameters per datapoint of the full data set, and each call uses the rows of the
    datapoints the model's plate draws (``subsample_size=`` or ``subsample=``). Starts at unconstrained
    location 0 and scale ``init_scale``, like the other guides' lambda_0.

    Usage::

        guide = PerDatapointGuide(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        svi.step(x_train, subsample_size=64)
        guide.elbo_trajectory(x_train)          # (1, N): ELBO of each training datapoint's stored q

    :param callable model: a Pyro model with its datapoints in a ``pyro.plate`` of fixed full size.
    :param float init_scale: initial unconstrained scale of every q.
    :param str plate_name: the data plate; by default the outermost plate holding every observed site.
    """

    def __init__(self, model: Callable, *, init_scale: float = 1.0, plate_name: str | None = None) -> None:
        super().__init__(model, init_loc_fn=init_to_feasible, init_scale=float(init_scale))
        self.plate_name = plate_name
        self.layout: SiteLayout | None = None

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        with poutine.block():
            self.layout = discover_sites(poutine.trace(self.model).get_trace(*args, **kwargs), self.plate_name)

    def _create_plates(self, *args, **kwargs) -> dict[str, pyro.plate]:
        name = self.layout.plate_name
        batch = locate_batch(self.model, name, args, kwargs)
        stored = self._prototype_frames[name].full_size
        if batch.full_size != stored:
            raise ValueError(
                f"{type(self).__name__} stores q for the {stored} datapoints of its training data, but the model's "
                f"plate '{name}' has {batch.full_size}. For other data use pyro_iterative.optimize_local."
            )
        self.plates = {}
        for frame_name, frame in sorted(self._prototype_frames.items()):
            if frame_name == name:
                self.plates[name] = batch.plate(self.layout)
            else:
                self.plates[frame_name] = pyro.plate(
                    frame_name, frame.full_size or frame.size, dim=frame.dim, subsample_size=frame.size
                )
        return self.plates

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """No model passes for its training datapoints (q is stored); new data needs :func:`optimize_local`."""
        return ModelPasses(forward=0, backward=0)

    def elbo_trajectory(self, *args, **kwargs) -> torch.Tensor:
        """Per-datapoint ELBO of the stored q of the batch the model draws, shape ``(1, batch)``."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        with torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(self).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(*args, **kwargs)
        return per_datapoint_elbo(model_trace, guide_trace, self.layout.plate).unsqueeze(0)
