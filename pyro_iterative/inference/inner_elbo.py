"""The per-datapoint ELBO that guides evaluate inside their own forward pass.

:class:`InnerELBO` estimates, for every datapoint of a batch, the ELBO of q(lambda) over the model's
local latent sites, using Pyro's own effect handlers, in one of two equivalent ways:

- the *general path* (:meth:`InnerELBO.trace`): an inner guide trace that samples the local sites from
  q(lambda) (global latents pinned to given values, the data plate pinned to given subsample indices),
  the model replayed against it and traced, and ``Trace.compute_log_prob`` on both traces;
- the *fast path* (the default for :meth:`InnerELBO.__call__` and :meth:`InnerELBO.log_weights`): q's
  samples are drawn directly (same shapes, same random stream) and one small messenger,
  :class:`ReplayScorer`, pins the model's sites to them and adds up each site's log-density inside the
  data plate as the model runs. No trace is built and nothing is copied; only the sites the guides
  read (observed and local) are kept. The guides call it ``num_iterations`` times per step.

Everything runs under ``poutine.block()``, so none of it reaches the caller's traces. Plate
subsampling scales are divided out, so a datapoint's ELBO, and its gradient, do not depend on the
batch size. A test checks that both paths give the same values and gradients.

Discrete local latents that the model marks for parallel enumeration are summed out exactly: the model
is traced under ``poutine.enum`` (always on the general path) and each datapoint's log-density is
contracted over the enumerated values with Pyro's tensor message passing
(:func:`pyro.ops.contract.contract_to_tensor`), so the ELBO and its gradient are the marginalised ones.

What does not live here: choosing the parameters (the guides), encoding gradients
(:mod:`pyro_iterative.inference.encodings`), and the outer ELBO that trains the model (Pyro's own losses).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import ExitStack
from typing import Callable

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine import Trace
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _DIM_ALLOCATOR
from pyro.poutine.util import site_is_subsample

from .batch import Batch
from .parameters import LocalParams
from .sites import ObservedSite, SiteLayout, model_mask

__all__ = [
    "InnerELBO",
    "ReplayScorer",
    "can_draw_pairs",
    "check_observations",
    "datapoint_mask",
    "enumerated_log_density",
    "latent_masks",
    "per_datapoint_elbo",
]


def can_draw_pairs(layout: SiteLayout, num_particles: int, fast: bool = True) -> bool:
    """Whether :class:`InnerELBO` can draw ``num_particles`` in antithetic pairs for this model: an even number, on the
    fast path, with no enumerated site (enumeration takes the general path). The rule behind ``antithetic=None``.

    Usage::

        InnerELBO(model, layout, 2, antithetic=can_draw_pairs(layout, 2))   # pairs where they can be drawn
    """
    return num_particles % 2 == 0 and fast and not layout.enumerated_names


def _base(q: dist.TorchDistribution) -> dist.TorchDistribution:
    """q's Normal in unconstrained space (q itself for a real-valued site)."""
    return q.base_dist if isinstance(q, dist.TransformedDistribution) else q


def _mirrored(base: dist.TorchDistribution, draw: torch.Tensor) -> torch.Tensor:
    """The antithetic partner of an unconstrained draw: its mirror image about the base Normal's location."""
    return 2 * base.mean - draw


def _rng_state(device: torch.device) -> torch.Tensor:
    """The state of the random-number generator that draws on ``device`` (dropout masks, for one)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _push_forward(q: dist.TorchDistribution, unconstrained: torch.Tensor) -> torch.Tensor:
    """q's value at an unconstrained draw of its base distribution (through q's transforms, whose cache lets
    ``q.log_prob`` invert them exactly)."""
    if isinstance(q, dist.TransformedDistribution):
        for transform in q.transforms:
            unconstrained = transform(unconstrained)
    return unconstrained


def _subsample_factor(site: dict) -> float:
    return math.prod(f.full_size / f.size for f in site["cond_indep_stack"] if f.full_size is not None)


def _per_datapoint(log_prob: torch.Tensor, plate_dim: int, particle_dim: int | None) -> torch.Tensor:
    """Sum a site's log-density over everything but the particle and datapoint dims: ``([P,] B)``."""
    if plate_dim == -1 and log_prob.dim() == (1 if particle_dim is None else 2) and particle_dim in (None, -2):
        return log_prob  # already ([P,] B): nothing to sum
    needed = -(particle_dim if particle_dim is not None else plate_dim)
    if log_prob.dim() < needed:
        log_prob = log_prob.reshape((1,) * (needed - log_prob.dim()) + log_prob.shape)
    if particle_dim is None:
        return log_prob.movedim(plate_dim, 0).reshape(log_prob.shape[plate_dim], -1).sum(-1)
    moved = log_prob.movedim((particle_dim, plate_dim), (0, 1))
    return moved.reshape(moved.shape[0], moved.shape[1], -1).sum(-1)


def datapoint_mask(site: dict, plate_dim: int, batch_size: int) -> torch.Tensor | None:
    """``(batch,)``: whether the model counts a sample site for each datapoint (``False`` where its mask is off
    everywhere inside the datapoint, e.g. a time step beyond a sequence's end); ``None`` for an unmasked site.

    Usage::

        datapoint_mask(model_trace.nodes["z_7"], layout.plate.dim, len(batch))
    """
    mask = model_mask(site)
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=site["value"].device)
    shape = torch.broadcast_shapes(mask.shape, site["fn"].batch_shape, (batch_size,) + (1,) * (-plate_dim - 1))
    mask = mask.expand(shape)
    return mask.movedim(plate_dim, 0).reshape(batch_size, -1).any(-1)


def latent_masks(model_trace: Trace, layout: SiteLayout, batch_size: int) -> dict[str, torch.Tensor]:
    """``(batch,)`` masks of the local sites the model masks (:attr:`SiteLayout.masked_names`), read from a model
    trace of the batch (as :class:`InnerELBO` returns it); q is masked alike, so that a step beyond a sequence's end
    counts in neither the model's log-density nor q's.

    Usage::

        _, model_trace = inner(args, kwargs, params, batch, {})
        latent_masks(model_trace, layout, len(batch))["z_7"]
    """
    masks = {}
    for name in layout.masked_names:
        mask = datapoint_mask(model_trace.nodes[name], layout.plate.dim, batch_size)
        if mask is not None:
            masks[name] = mask
    return masks


def _mask_log_q(log_q: torch.Tensor, site: dict, plate_dim: int, batch_size: int) -> torch.Tensor:
    """A local site's per-datapoint ``log q`` with the datapoints the model masks at that site set to 0."""
    mask = datapoint_mask(site, plate_dim, batch_size)
    return log_q if mask is None else torch.where(mask, log_q, torch.zeros((), dtype=log_q.dtype))


class ReplayScorer(Messenger):
    """Pin a model's latent sites to given values and add up, as the model runs, each datapoint's log-density.

    The fast path's replacement for ``poutine.trace(poutine.replay(model, guide_trace))`` followed by
    ``compute_log_prob``: at a sample site named in ``values`` the value is set (as replay does); the
    data plate's subsample site is pinned to the batch's indices; after every sample site inside the
    data plate, ``log p`` (scaled and masked as the trace would, subsampling scale divided out) is summed
    into ``log_density``, one entry per ``([particle,] datapoint)``. Only the sites named in ``keep``
    are remembered, in ``trace``. Observed sites in ``check`` are refused, as by
    :func:`check_observations`, before they are scored.

    Usage::

        scorer = ReplayScorer({"z": z}, batch, layout.plate, particle_dim=None, keep={"x"})
        with poutine.block(), scorer:
            model(*args, **kwargs)
        scorer.log_density          # (batch,) sum of log p over the data plate's sites
        scorer.trace.nodes["x"]     # the observed site, as a trace would hold it
    """

    def __init__(
        self,
        values: dict[str, torch.Tensor],
        batch: Batch,
        plate: CondIndepStackFrame,
        particle_dim: int | None,
        keep: frozenset[str] | set[str] = frozenset(),
        check: tuple[ObservedSite, ...] = (),
    ) -> None:
        super().__init__()
        self.values = values
        self.batch = batch
        self.plate = plate
        self.particle_dim = particle_dim
        self.keep = keep
        self.check = {site.name: site for site in check}
        self.log_density: torch.Tensor | None = None
        self.trace = Trace()

    def _pyro_sample(self, msg: dict) -> None:
        name = msg["name"]
        if msg["is_observed"]:
            return
        if name in self.values:
            msg["value"] = self.values[name]
            msg["done"] = True
        elif name == self.plate.name and site_is_subsample(msg):
            msg["value"] = self.batch.indices
            msg["done"] = True

    def _pyro_post_sample(self, msg: dict) -> None:
        if not any(f.name == self.plate.name for f in msg["cond_indep_stack"]):
            return
        if msg["name"] in self.check:
            _check_observed(self.check[msg["name"]], msg["value"], self.plate.dim)
        log_prob = msg["fn"].log_prob(msg["value"], *msg["args"], **msg["kwargs"])
        factor = _subsample_factor(msg)  # divided out of the scale, not of the log-density: one operation fewer
        log_prob = scale_and_mask(log_prob, msg["scale"] if factor == 1 else msg["scale"] / factor, msg["mask"])
        log_prob = _per_datapoint(log_prob, self.plate.dim, self.particle_dim)
        self.log_density = log_prob if self.log_density is None else self.log_density + log_prob
        if msg["name"] in self.keep:
            self.trace.add_node(msg["name"], **msg)


class InnerELBO:
    """Per-datapoint Monte-Carlo ELBO of q(lambda) for a model's local latent sites.

    ``ELBO_i = E_q[log p(x_i, z_i | globals) - log q(z_i)]``, summed over every site inside the data plate
    (global latents are held at given values and their terms are left out), estimated with
    ``num_particles`` reparameterized samples drawn in a vectorized particle plate, or one at a time for a model
    that cannot run with a particle dimension (a decoder with batch normalisation takes ``(batch, features)`` only):
    with ``vectorize=None`` (the default) the first call tries the plate and, if the model fails under it or scores
    it differently from a single particle (checked once, with every particle at q's location; a ``BatchNorm1d(n)``
    decoder takes a batch of ``n`` datapoints with a particle dimension without an error, and misreads it), every
    call from then on draws the particles one at a time. A model that draws random numbers of its own (dropout)
    fails that check too, and is given one particle at a time.

    Calls take the fast path (see the module docstring) unless ``fast=False``; both give the same values
    from the same random draws, and :meth:`trace` always takes the general path.

    With ``antithetic=True`` the particles come in pairs: each unconstrained draw ``u = loc + scale * eps`` and its
    mirror image ``2 * loc - u`` (Pyro's distributions do the rest). The estimate stays unbiased; where the model's
    log-density is quadratic in the latents (a linear-Gaussian model), the gradient with respect to q's locations
    is then exact. It needs an even ``num_particles`` and the fast path; for a model that cannot take a particle
    dimension the pairs are drawn one particle at a time.

    Usage::

        inner = InnerELBO(model, layout, num_particles=1)
        elbo, model_trace = inner(args, kwargs, params, batch, global_values={})
        grads = torch.autograd.grad(elbo.sum(), [loc, scale])

    :param model: the Pyro model.
    :param layout: the model's :class:`~pyro_iterative.inference.sites.SiteLayout`.
    :param num_particles: number of samples per datapoint.
    :param fast: score the model with :class:`ReplayScorer` instead of building traces.
    :param vectorize: draw the particles in a vectorized plate (``True``), one at a time (``False``), or try the
        plate first (``None``).
    :param antithetic: draw the particles in antithetic pairs (see above).
    """

    def __init__(
        self, model: Callable, layout: SiteLayout, num_particles: int = 1, *, fast: bool = True,
        vectorize: bool | None = None, antithetic: bool = False,
    ) -> None:
        if num_particles < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}.")
        self.model = model
        self.layout = layout
        self.num_particles = num_particles
        self.fast = fast and not layout.enumerated_names  # enumeration needs a trace to contract
        self.vectorize = vectorize
        self._vectorizing_checked = vectorize is not None
        self.antithetic = bool(antithetic)
        if self.antithetic and not can_draw_pairs(layout, num_particles, fast):
            raise ValueError(
                "antithetic particles come in pairs drawn on the fast path: they need an even num_particles (got "
                f"{num_particles}), fast=True and no enumerated sites (got fast={fast}, enumerated sites "
                f"{list(layout.enumerated_names)}); or use antithetic=False."
            )
        # Sites whose model-trace entries the guides read: the data, the errors encoding's means.
        self._keep = frozenset(site.name for site in layout.observed_sites + layout.local_sites)

    @property
    def particle_dim(self) -> int | None:
        """Dim of the inner particle plate: left of the model's plates and of any plate active around the call
        (such as SVI's own vectorized particles; Pyro's dim allocator is global, even under ``poutine.block``).
        ``None`` for one particle, or when the particles are drawn one at a time."""
        if self.num_particles == 1 or self.vectorize is False:
            return None
        return self._leftmost_free_dim()

    def _leftmost_free_dim(self) -> int:
        # Pyro's dim allocator is global, even under poutine.block: count the plates active around the call.
        return -(max(self.layout.max_plate_nesting, len(_DIM_ALLOCATOR._stack)) + 1)

    def _first_enum_dim(self, particle_dim: int | None) -> int:
        """Where enumerated values go: left of the particle plate, the model's plates and any active plate."""
        return self._leftmost_free_dim() if particle_dim is None else particle_dim - 1

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
            model = self.model
            if self.layout.enumerated_names:  # as TraceEnum_ELBO: the enumeration inside, the replay around it
                model = poutine.enum(model, first_available_dim=self._first_enum_dim(dim))
            model = poutine.replay(model, trace=guide_trace)
            with self._particles(dim):
                model_trace = poutine.trace(model).get_trace(*args, **kwargs)
        for name, mask in latent_masks(model_trace, self.layout, len(batch)).items():  # q counts where p counts
            guide_trace.nodes[name]["mask"] = mask.reshape(mask.shape + (1,) * (-self.layout.plate.dim - 1))
        return guide_trace, model_trace

    def _score(
        self,
        args: tuple,
        kwargs: dict,
        params: LocalParams,
        batch: Batch,
        global_values: dict[str, torch.Tensor],
        check_data: bool = False,
        mirror: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None,
        at_location: bool = False,
        plain: bool = False,
    ) -> tuple[torch.Tensor, Trace, tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """The fast path: ``([particles,] batch)`` log-weights ``log p - log q``, the kept model sites and, with
        ``antithetic``, each site's unconstrained draw and the random-number state the model ran from. ``mirror``
        (such a pair) asks for the draws' mirror images instead of new draws, and runs the model from that state again,
        so that the model's own randomness (dropout masks) is the same for both halves of the pair.
        ``at_location`` puts every particle at q's location (no draw); ``plain`` runs one particle without a particle
        plate."""
        dim = None if plain else self.particle_dim
        values, log_q, draws = dict(global_values), {}, {}
        for site in self.layout.local_sites:
            # Drawn as the inner guide's plates would draw it: expanded over the particles, then rsample(). q's
            # parameters are this package's own (their non-finite values are caught by the guides): not validated.
            q = site.distribution(*params[site.name], validate_args=False)
            if dim is not None:
                shape = (1,) * (-dim - len(q.batch_shape)) + tuple(q.batch_shape)
                if self.antithetic and not at_location:  # half the particles drawn, then mirrored about q's location
                    half = _base(q).expand(shape[:dim] + (self.num_particles // 2,) + shape[dim + 1 :])
                    first = half.rsample()
                    draws[site.name] = torch.cat([first, _mirrored(half, first)], dim=len(shape) + dim)
                q = q.expand(shape[:dim] + (self.num_particles,) + shape[dim + 1 :])
            elif mirror is not None:
                draws[site.name] = _mirrored(_base(q), mirror[0][site.name])
            elif self.antithetic and not at_location:
                draws[site.name] = _base(q).rsample()
            if at_location:
                draws[site.name] = _base(q).mean
            value = q.rsample() if site.name not in draws else _push_forward(q, draws[site.name])
            values[site.name] = value
            log_q[site.name] = _per_datapoint(q.log_prob(value), self.layout.plate.dim, dim)
        check = self.layout.observed_sites if check_data else ()
        scorer = ReplayScorer(values, batch, self.layout.plate, dim, self._keep, check)
        rng_state = None
        if self.antithetic and dim is None:  # the model's own draws (dropout) repeat for the pair's second half
            device = next(iter(values.values())).device
            rng_state = _rng_state(device)
            if mirror is not None:
                _set_rng_state(device, mirror[1])
        with poutine.block(), self._particles(dim), scorer:
            self.model(*args, **kwargs)
        if scorer.log_density is None:
            raise ValueError(f"No sample site of the model lies inside the plate '{self.layout.plate_name}'.")
        for name in self.layout.masked_names:  # q counts where the model counts the site
            log_q[name] = _mask_log_q(log_q[name], scorer.trace.nodes[name], self.layout.plate.dim, len(batch))
        return scorer.log_density - sum(log_q.values()), scorer.trace, (draws, rng_state)

    def _log_weights(self, args, kwargs, params, batch, global_values, check_data=False) -> tuple[torch.Tensor, Trace]:
        """``([particles,] batch)`` log-weights (the particle dim when there are several) and a model trace."""
        if self.num_particles > 1 and self.vectorize is None:
            device = next(iter(params.values()))[0].device
            state = _rng_state(device)  # a failed try draws nothing: common random numbers stay common
            try:
                if not self._vectorizing_checked:
                    self._check_vectorizing(args, kwargs, params, batch, global_values)
                return self._log_weights_once(args, kwargs, params, batch, global_values, check_data)
            except (RuntimeError, ValueError, IndexError):  # e.g. a decoder that takes (batch, features) only
                _set_rng_state(device, state)
                self.vectorize = False  # from now on, one particle at a time (a genuine error is raised again there)
        if self.num_particles > 1 and self.vectorize is False and self.antithetic:  # pairs, one particle at a time
            firsts, seconds, trace = [], [], None
            for i in range(self.num_particles // 2):
                first, run_trace, draws = self._score(args, kwargs, params, batch, global_values, check_data and not i)
                second, _, _ = self._score(args, kwargs, params, batch, global_values, mirror=draws)
                firsts.append(first)
                seconds.append(second)
                trace = trace if trace is not None else run_trace
            return torch.stack(firsts + seconds), trace  # the vectorized order: draws, then their mirror images
        if self.num_particles > 1 and self.vectorize is False:
            runs = [self._log_weights_once(args, kwargs, params, batch, global_values, check_data and not i)
                    for i in range(self.num_particles)]
            return torch.stack([weights for weights, _ in runs]), runs[0][1]
        return self._log_weights_once(args, kwargs, params, batch, global_values, check_data)

    def _check_vectorizing(self, args, kwargs, params, batch, global_values) -> None:
        """Raise ``ValueError`` unless the model scores particles in a particle plate as it scores one particle
        without it. Some models take the extra dimension without an error and misread it: ``BatchNorm1d(n)`` reads
        ``(particles, batch, n)`` as ``(N, C, L)`` when the batch has ``n`` datapoints, and normalises over the
        particles and features instead of the batch. Checked once, at q's location, both runs from the present
        random-number state (which it leaves as it was): a model that draws (dropout) gives other values from other
        shapes, and its particles are drawn one at a time."""
        if not self.fast:  # the general path (enumerated sites) is not checked
            self._vectorizing_checked = True
            return
        device = next(iter(params.values()))[0].device
        devices = [device] if device.type == "cuda" else []
        with torch.no_grad():
            with torch.random.fork_rng(devices=devices):
                one = self._score(args, kwargs, params, batch, global_values, at_location=True, plain=True)[0]
            with torch.random.fork_rng(devices=devices):
                many = self._score(args, kwargs, params, batch, global_values, at_location=True)[0]
        if many.shape != (self.num_particles,) + one.shape or not torch.allclose(
            many, one.expand_as(many), rtol=1e-4, atol=1e-3
        ):
            raise ValueError("the model scores a particle plate differently from one particle")
        self._vectorizing_checked = True

    def _log_weights_once(self, args, kwargs, params, batch, global_values, check_data) -> tuple[torch.Tensor, Trace]:
        if self.fast:
            return self._score(args, kwargs, params, batch, global_values, check_data)[:2]
        guide_trace, model_trace = self.trace(args, kwargs, params, batch, global_values)
        if check_data:
            check_observations(model_trace, self.layout)
        weights = per_datapoint_elbo(model_trace, guide_trace, self.layout.plate, self.particle_dim, reduce=False)
        return weights, model_trace

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

        On the fast path the returned trace holds only the observed and local sites inside the data plate.
        With ``check_data``, observed values in the data plate are checked to be finite first.
        """
        weights, model_trace = self._log_weights(args, kwargs, params, batch, global_values, check_data)
        return (weights.mean(0) if self.num_particles > 1 else weights), model_trace

    def log_weights_by_value(
        self,
        args: tuple,
        kwargs: dict,
        params: LocalParams,
        batch: Batch,
        global_values: dict[str, torch.Tensor],
        site: str,
    ) -> torch.Tensor:
        """``(num_particles, batch, values)`` log-weights ``log p(x_i, z, c = k) - log q(z)`` for each value ``k``
        of the enumerated site ``site`` (its other enumerated sites summed out); ``logsumexp`` over the last dim
        gives :meth:`log_weights`. The particles are drawn in a vectorized plate.

        Usage::

            log_w = InnerELBO(model, layout, 100).log_weights_by_value((x,), {}, params, batch, {}, "y")
            posterior = (log_w.logsumexp(0) - log_w.logsumexp((0, 2)).unsqueeze(-1)).exp()   # p(y = k | x)
        """
        if site not in self.layout.enumerated_names:
            raise ValueError(
                f"'{site}' is not an enumerated site of this model; they are {self.layout.enumerated_names}."
            )
        dim = self.particle_dim
        guide_trace, model_trace = self.trace(args, kwargs, params, batch, global_values)
        log_p = enumerated_log_density(model_trace, self.layout.plate, dim, keep=site)
        weights = log_p - _log_density(guide_trace, self.layout.plate, dim).unsqueeze(-1)
        return weights if dim is not None else weights.unsqueeze(0)

    def pair_means(self, weights: torch.Tensor) -> torch.Tensor:
        """Per-particle values ``(num_particles, ...)`` (log-weights, or differences of them taken on common random
        numbers) averaged within each antithetic pair: ``(num_particles // 2, ...)`` independent values, whose spread
        gives a valid standard error; the values themselves when the particles are not drawn in pairs. Particle
        ``i`` and particle ``i + num_particles // 2`` form a pair, however the particles were drawn.

        Usage::

            inner = InnerELBO(model, layout, num_particles=8, antithetic=True)
            pairs = inner.pair_means(inner.log_weights((x,), {}, params, batch, {}))   # (4, batch)
            pairs.mean(0), pairs.std(0) / 2                                             # the ELBO and its SE
        """
        if weights.shape[0] != self.num_particles:
            raise ValueError(f"expected {self.num_particles} particles along dim 0, got shape {tuple(weights.shape)}.")
        if not self.antithetic:
            return weights
        half = self.num_particles // 2
        return (weights[:half] + weights[half:]) / 2

    def log_weights(
        self,
        args: tuple,
        kwargs: dict,
        params: LocalParams,
        batch: Batch,
        global_values: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """``(num_particles, batch)`` importance log-weights ``log p(x_i, z) - log q(z)``, one per sample."""
        weights, _ = self._log_weights(args, kwargs, params, batch, global_values)
        return weights if self.num_particles > 1 else weights.unsqueeze(0)


def check_observations(model_trace: Trace, layout: SiteLayout) -> None:
    """Refuse observed values that no ELBO can score: NaN or infinite entries, and raw ``uint8`` images.

    Usage::

        _, model_trace = inner.trace(args, kwargs, params, batch, {})
        check_observations(model_trace, layout)

    :raises ValueError: naming the site, how many values and datapoints are affected, and what to do.
    """
    for site in layout.observed_sites:
        _check_observed(site, model_trace.nodes[site.name]["value"], layout.plate.dim)


def _check_observed(site: ObservedSite, value: torch.Tensor, plate_dim: int) -> None:
    if value.dtype == torch.uint8:
        raise ValueError(
            f"Observed site '{site.name}' holds uint8 values (raw 0..255 images). Convert them to floats in [0, 1] "
            "first: x.float() / 255 (pyro_iterative.data.load_array does this for you)."
        )
    if value.is_floating_point() and not torch.isfinite(value).all():
        rows = site.flatten(value, plate_dim)
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
    (``reduce=False`` keeps it: ``(particles, batch)`` log-weights). Where the model trace holds enumerated
    sites (it was traced under ``poutine.enum``), ``log p`` is each datapoint's log-density summed over their
    values (:func:`enumerated_log_density`).

    Usage::

        elbo = per_datapoint_elbo(model_trace, guide_trace, layout.plate)
    """
    enumerated = any(
        site["type"] == "sample" and site["infer"].get("_enumerate_dim") is not None
        for site in model_trace.nodes.values()
    )
    if enumerated:
        log_p = enumerated_log_density(model_trace, plate, particle_dim)
    else:
        log_p = _log_density(model_trace, plate, particle_dim)
    elbo = log_p - _log_density(guide_trace, plate, particle_dim)
    return elbo.mean(0) if particle_dim is not None and reduce else elbo


def _log_density(trace: Trace, plate: CondIndepStackFrame, particle_dim: int | None) -> torch.Tensor:
    """``([particles,] batch)`` sum of a trace's log-densities inside the data plate, subsampling scales divided out."""
    trace.compute_log_prob(lambda name, site: any(f.name == plate.name for f in site["cond_indep_stack"]))
    terms = [
        _per_datapoint(site["log_prob"] / _subsample_factor(site), plate.dim, particle_dim)
        for site in trace.nodes.values() if site["type"] == "sample" and "log_prob" in site
    ]
    if not terms:
        raise ValueError(f"No sample site of these traces lies inside the plate '{plate.name}'.")
    return sum(terms)


def enumerated_log_density(
    model_trace: Trace, plate: CondIndepStackFrame, particle_dim: int | None = None, keep: str | None = None
) -> torch.Tensor:
    """``([particles,] batch)`` log-density of each datapoint's sites, summed over the enumerated values.

    ``model_trace`` comes from a model run under ``poutine.enum`` (parallel enumeration). Every sample site
    inside the data ``plate`` contributes its masked log-density; Pyro's tensor message passing
    (:func:`~pyro.ops.contract.contract_to_tensor`) sums out the enumerated dimensions and multiplies over the
    plates nested in the data plate, keeping the datapoints (and the particle plate, if any). Plate
    subsampling scales are divided out; any other ``poutine.scale`` must be shared by the sites, as Pyro's
    ``TraceEnum_ELBO`` requires, and multiplies the result. With ``keep``, the name of an enumerated site, its
    values are not summed out: the result gains a last dim, one entry per value in enumeration order
    (``([particles,] batch, values)``, the joint log-density with the site at each value).

    Usage::

        model_trace = poutine.trace(poutine.enum(model, first_available_dim=-2)).get_trace(x)
        log_p = enumerated_log_density(model_trace, layout.plate)   # (batch,)
        log_joint = enumerated_log_density(model_trace, layout.plate, keep="c")   # (batch, num_categories)
    """
    sites = [
        site for site in model_trace.nodes.values()
        if site["type"] == "sample" and any(f.name == plate.name for f in site["cond_indep_stack"])
    ]
    model_trace.compute_log_prob(lambda name, site: site in sites)
    model_trace.pack_tensors()
    scales = {float(site["scale"] / _subsample_factor(site)) for site in sites}
    if len(scales) != 1:
        names = ", ".join(f"'{site['name']}'" for site in sites)
        raise ValueError(
            f"The sites {names} inside the data plate have different poutine.scale factors {sorted(scales)}; "
            "summing out enumerated latents needs one common scale, as in Pyro's TraceEnum_ELBO."
        )
    plate_symbols = set(model_trace.plate_to_symbol.values())
    tree, sum_dims = OrderedDict(), set()
    for site in sites:
        log_prob = packed.scale_and_mask(site["packed"]["unscaled_log_prob"], mask=site["packed"]["mask"])
        ordinal = frozenset(model_trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)
        tree.setdefault(ordinal, []).append(log_prob)
        sum_dims.update(set(log_prob._pyro_dims) - plate_symbols)
    target = frozenset(
        model_trace.plate_to_symbol[f.name] for f in sites[0]["cond_indep_stack"]
        if f.vectorized and (f.name == plate.name or f.dim == particle_dim)
    )
    scale, kept = scales.pop(), set()
    if keep is not None:
        node = model_trace.nodes.get(keep)
        enum_dim = None if node is None else node["infer"].get("_enumerate_dim")
        if enum_dim is None:
            raise ValueError(f"keep='{keep}' names no enumerated site of this model trace.")
        kept = {node["infer"]["_dim_to_symbol"][enum_dim]}
    total = packed.unpack(contract_to_tensor(tree, sum_dims, target_ordinal=target), model_trace.symbol_to_dim)
    total = _per_datapoint(total, plate.dim, particle_dim)
    if keep is None:
        return scale * total
    # With target dims, Pyro contracts only the factors connected to them (a marginal, "modulo total"): the
    # factors not connected to the kept site enter through the total.
    kept_terms = contract_to_tensor(tree, sum_dims, target_ordinal=target, target_dims=kept)
    log_p = packed.unpack(kept_terms, model_trace.symbol_to_dim)
    log_p = log_p.reshape((1,) * (-enum_dim - log_p.dim()) + log_p.shape)
    values = torch.stack([_per_datapoint(log_p.narrow(enum_dim, k, 1), plate.dim, particle_dim)
                          for k in range(log_p.shape[enum_dim])], dim=-1)
    return scale * (values + (total - values.logsumexp(-1)).unsqueeze(-1))
