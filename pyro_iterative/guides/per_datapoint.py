"""PerDatapointGuide: variational EM, q's parameters stored for every datapoint of the training set.

The paper's "SVI" baseline (Hoffman et al. 2013): no inference network; each datapoint owns its q,
optimized jointly with the model whenever its minibatch comes round. Pyro's own
:class:`~pyro.infer.autoguide.AutoNormal` already stores per-datapoint parameters indexed by the
plate's subsample indices; this module wraps it so that the data plate follows the model's own
subsampling and so that it offers the same inspection as the other guides. For datapoints it was
not trained on, use :func:`pyro_iterative.optimize_local` (or
:class:`~pyro_iterative.guides.optimizing.OptimizingGuide`).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.guides import prototype_hide_fn
from pyro.infer.autoguide.initialization import init_to_feasible, init_to_sample

from ..inference.batch import locate_batch
from ..inference.cost import ModelPasses
from ..inference.inner_elbo import per_datapoint_elbo
from ..inference.sites import SiteLayout, discover_sites

__all__ = [
    "PerDatapointGuide",
]


def _init_to_feasible_or_sample(site: dict) -> torch.Tensor:
    # Discrete sites (summed out by enumeration, no q) have no feasible unconstrained point: draw their prototype.
    return init_to_sample(site) if site["fn"].support.is_discrete else init_to_feasible(site)


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
        super().__init__(model, init_loc_fn=_init_to_feasible_or_sample, init_scale=float(init_scale))
        self.plate_name = plate_name
        self.layout: SiteLayout | None = None
        #: always 0: the stored q takes no inner gradient steps (kept for the guide protocol)
        self.nonfinite_gradients = 0

    @staticmethod
    def _prototype_hide_fn(msg: dict) -> bool:
        # AutoNormal's filter, and the discrete sites the model enumerates (no q of theirs: the ELBO sums them out).
        return prototype_hide_fn(msg) or msg["infer"].get("enumerate") == "parallel"

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        with poutine.block():
            self.layout = discover_sites(poutine.trace(self.model).get_trace(*args, **kwargs), self.plate_name)

    def setup(self, *args, **kwargs) -> "PerDatapointGuide":
        """Create the stored q of every datapoint without running inference; returns the guide.

        Usage::

            guide = PerDatapointGuide(model).setup(x_train, subsample_size=64)
            guide.load_state_dict(torch.load("guide.pt"))
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return self

    def count_inference_parameters(self) -> int:
        """Stored q parameters of the local sites (a location and a scale per coordinate per datapoint).

        Usage::

            PerDatapointGuide(model).setup(x_train).count_inference_parameters()   # 2 * N * latent size
        """
        stored = (self.locs, self.scales)  # AutoNormal's modules of per-site parameters, nested by site name
        return sum(attrgetter(site.name)(module).numel() for site in self.layout.local_sites for module in stored)

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
        """No model passes for its training datapoints (q is stored); new data needs
        :func:`~pyro_iterative.optimization.optimize_local`."""
        return ModelPasses(forward=0, backward=0)

    def elbo_trajectory(
        self, *args, num_iterations: int | None = None, num_particles: int | None = None, **kwargs
    ) -> torch.Tensor:
        """Per-datapoint ELBO of the stored q of the batch the model draws, shape ``(1, batch)``: one sample, or the
        mean of ``num_particles`` samples."""
        if num_iterations:
            raise ValueError(f"{type(self).__name__} stores q; num_iterations does not apply.")
        self.setup(*args, **kwargs)
        estimates, model = [], self.model
        if self.layout.enumerated_names:  # summed out, as by TraceEnum_ELBO
            model = poutine.enum(model, first_available_dim=-1 - self.layout.max_plate_nesting)
        for _ in range(num_particles or 1):
            with torch.no_grad(), poutine.block():
                guide_trace = poutine.trace(self).get_trace(*args, **kwargs)
                model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
            estimates.append(per_datapoint_elbo(model_trace, guide_trace, self.layout.plate))
        return torch.stack(estimates).mean(0, keepdim=True)
