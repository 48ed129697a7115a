"""The per-datapoint ELBO that guides evaluate inside their own forward pass.

:class:`InnerELBO` estimates, for every datapoint of a batch, the ELBO of q(lambda) over the model's
local latent sites, using Pyro's own trace machinery: an inner guide trace that samples the local
sites from q(lambda) (global latents pinned to given values, the data plate pinned to given
subsample indices), and the model replayed against it. Everything runs under ``poutine.block()``, so
none of it reaches the caller's traces. Plate subsampling scales are divided out, so a datapoint's
ELBO, and its gradient, do not depend on the batch size.

What does not live here: choosing the parameters (the guides), encoding gradients
(:mod:`pyro_iterative.encodings`), and the outer ELBO that trains the model (Pyro's own losses).
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine import Trace
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.runtime import _DIM_ALLOCATOR, NonlocalExit
from pyro.poutine.util import site_is_subsample

from .sites import SiteLayout

__all__ = [
    "Batch",
    "InnerELBO",
    "LocalParams",
    "check_observations",
    "locate_batch",
    "per_datapoint_elbo",
]

#: Per local site name, q's ``(loc, scale)`` in unconstrained space, each of shape ``(batch, size)``.
LocalParams = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Batch:
    """The datapoints of one guide call: indices into the data plate and the plate's full size."""

    indices: torch.Tensor
    full_size: int

    def __len__(self) -> int:
        return self.indices.shape[0]

    def plate(self, layout: SiteLayout) -> pyro.plate:
        """A fresh data plate pinned to these indices (constructing it records its subsample site)."""
        return pyro.plate(layout.plate_name, self.full_size, subsample=self.indices, dim=layout.plate.dim)


def _subsample_factor(site: dict) -> float:
    return math.prod(f.full_size / f.size for f in site["cond_indep_stack"] if f.full_size is not None)


def _per_datapoint(log_prob: torch.Tensor, plate_dim: int, particle_dim: int | None) -> torch.Tensor:
    """Sum a site's log-density over everything but the particle and datapoint dims: ``([P,] B)``."""
    needed = -(particle_dim if particle_dim is not None else plate_dim)
    if log_prob.dim() < needed:
        log_prob = log_prob.reshape((1,) * (needed - log_prob.dim()) + log_prob.shape)
    if particle_dim is None:
        return log_prob.movedim(plate_dim, 0).reshape(log_prob.shape[plate_dim], -1).sum(-1)
    moved = log_prob.movedim((particle_dim, plate_dim), (0, 1))
    return moved.reshape(moved.shape[0], moved.shape[1], -1).sum(-1)


class InnerELBO:
    """Per-datapoint Monte-Carlo ELBO of q(lambda) for a model's local latent sites.

    ``ELBO_i = E_q[log p(x_i, z_i | globals) - log q(z_i)]``, summed over every site inside the data plate
    (global latents are held at given values and their terms are left out), estimated with
    ``num_particles`` reparameterized samples drawn in a vectorized particle plate.

    Usage::

        inner = InnerELBO(model, layout, num_particles=1)
        elbo, model_trace = inner(args, kwargs, params, batch, global_values={})
        grads = torch.autograd.grad(elbo.sum(), [loc, scale])

    :param model: the Pyro model.
    :param layout: the model's :class:`~pyro_iterative.sites.SiteLayout`.
    :param num_particles: number of samples per datapoint.
    """

    def __init__(self, model: Callable, layout: SiteLayout, num_particles: int = 1) -> None:
        if num_particles < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}.")
        self.model = model
        self.layout = layout
        self.num_particles = num_particles

    @property
    def particle_dim(self) -> int | None:
        """Dim of the inner particle plate: left of the model's plates and of any plate active around the call
        (such as SVI's own vectorized particles; Pyro's dim allocator is global, even under ``poutine.block``)."""
        if self.num_particles == 1:
            return None
        active = len(_DIM_ALLOCATOR._stack)
        return -(max(self.layout.max_plate_nesting, active) + 1)

    def _particles(self, dim: int | None) -> ExitStack:
        stack = ExitStack()
        if dim is not None:
            stack.enter_context(pyro.plate("_inner_particles", self.num_particles, dim=dim))
        return stack

    def _guide(self, params: LocalParams, batch: Batch, global_values: dict[str, torch.Tensor], dim) -> None:
        for name, value in global_values.items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))
        with self._particles(dim), batch.plate(self.layout):
            for site in self.layout.local_sites:
                pyro.sample(site.name, site.distribution(*params[site.name]))

    def trace(
        self,
        args: tuple,
        kwargs: dict,
        params: LocalParams,
        batch: Batch,
        global_values: dict[str, torch.Tensor],
    ) -> tuple[Trace, Trace]:
        """Run the inner guide at ``params`` and the model replayed against it: ``(guide_trace, model_trace)``."""
        dim = self.particle_dim
        with poutine.block():
            guide_trace = poutine.trace(self._guide).get_trace(params, batch, global_values, dim)
            with self._particles(dim):
                model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(*args, **kwargs)
        return guide_trace, model_trace

    def __call__(
        self,
        args: tuple,
        kwargs: dict,
        params: LocalParams,
        batch: Batch,
        global_values: dict[str, torch.Tensor],
        *,
        check_data: bool = False,
    ) -> tuple[torch.Tensor, Trace]:
        """Return the ``(batch,)`` ELBO estimates (averaged over particles) and the model trace.

        With ``check_data``, observed values in the data plate are checked to be finite first.
        """
        guide_trace, model_trace = self.trace(args, kwargs, params, batch, global_values)
        if check_data:
            check_observations(model_trace, self.layout)
        elbo = per_datapoint_elbo(model_trace, guide_trace, self.layout.plate, self.particle_dim)
        return elbo, model_trace

    def log_weights(
        self,
        args: tuple,
        kwargs: dict,
        params: LocalParams,
        batch: Batch,
        global_values: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """``(num_particles, batch)`` importance log-weights ``log p(x_i, z) - log q(z)``, one per sample."""
        guide_trace, model_trace = self.trace(args, kwargs, params, batch, global_values)
        weights = per_datapoint_elbo(model_trace, guide_trace, self.layout.plate, self.particle_dim, reduce=False)
        return weights if self.particle_dim is not None else weights.unsqueeze(0)


def check_observations(model_trace: Trace, layout: SiteLayout) -> None:
    """Refuse observed values that no ELBO can score: NaN or infinite entries, and raw ``uint8`` images.

    Usage::

        _, model_trace = inner.trace(args, kwargs, params, batch, {})
        check_observations(model_trace, layout)

    :raises ValueError: naming the site, how many values and datapoints are affected, and what to do.
    """
    for site in layout.observed_sites:
        value = model_trace.nodes[site.name]["value"]
        if value.dtype == torch.uint8:
            raise ValueError(
                f"Observed site '{site.name}' holds uint8 values (raw 0..255 images). Convert them to floats in [0, 1] "
                "first: x.float() / 255 (pyro_iterative.data.load_array does this for you)."
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            rows = site.flatten(value, layout.plate.dim)
            bad = ~torch.isfinite(rows).all(-1)
            raise ValueError(
                f"Observed site '{site.name}' holds {int((~torch.isfinite(rows)).sum())} NaN or infinite values in "
                f"{int(bad.sum())} of the {len(rows)} datapoints of this batch (the first at position "
                f"{int(bad.nonzero()[0])}); remove or impute them before inference."
            )


def per_datapoint_elbo(
    model_trace: Trace,
    guide_trace: Trace,
    plate: CondIndepStackFrame,
    particle_dim: int | None = None,
    *,
    reduce: bool = True,
) -> torch.Tensor:
    """``(batch,)`` ELBO estimates from a guide trace and the model trace replayed against it.

    Sums ``log p - log q`` over the sites inside the data ``plate`` (matched by name), one value per
    datapoint, with plate subsampling scales divided out; averages over a particle dimension if given
    (``reduce=False`` keeps it: ``(particles, batch)`` log-weights).

    Usage::

        elbo = per_datapoint_elbo(model_trace, guide_trace, layout.plate)
    """
    elbo = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob(lambda name, site: any(f.name == plate.name for f in site["cond_indep_stack"]))
        for site in trace.nodes.values():
            if site["type"] == "sample" and "log_prob" in site:
                log_prob = site["log_prob"] / _subsample_factor(site)
                elbo = elbo + sign * _per_datapoint(log_prob, plate.dim, particle_dim)
    if isinstance(elbo, float):
        raise ValueError(f"No sample site of these traces lies inside the plate '{plate.name}'.")
    return elbo.mean(0) if particle_dim is not None and reduce else elbo


def locate_batch(model: Callable, plate_name: str, args: tuple, kwargs: dict) -> Batch:
    """Ask ``model`` which datapoints it draws on this call, running it only up to its first site in the plate.

    Usage::

        batch = locate_batch(model, "data", (x,), {"subsample_size": 64})
        batch.indices  # the 64 indices the model's plate drew
    """

    def at_first_datapoint_site(msg: dict) -> bool:
        return not site_is_subsample(msg) and any(f.name == plate_name for f in msg["cond_indep_stack"])

    tracer = poutine.trace(poutine.escape(model, escape_fn=at_first_datapoint_site))
    with poutine.block():
        try:
            tracer(*args, **kwargs)
        except NonlocalExit:
            pass
        except ZeroDivisionError:  # Pyro's plate scales by full size / subsample size
            site = tracer.trace.nodes.get(plate_name)
            if site is None or len(site["value"]) != 0:
                raise
    site = tracer.trace.nodes.get(plate_name)
    if site is not None and len(site["value"]) == 0:
        raise ValueError(f"The batch is empty: the model's plate '{plate_name}' drew no datapoints. Pass at least one.")
    if site is None:
        raise ValueError(
            f"The model did not open its data plate '{plate_name}' with a size on this call; call it with the same "
            "arguments as in training, and give the plate its size: pyro.plate(name, N, ...)."
        )
    return Batch(site["value"], site["fn"].size)
