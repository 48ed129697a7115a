"""Site discovery: which sample sites of a model are local latents, global latents and observations.

This module reads a prototype trace of a Pyro model and describes its sites in a form the guides can
use: :class:`LocalSite` (a latent inside the data plate, with its unconstrained per-datapoint layout),
:class:`ObservedSite` (an observation inside the data plate) and :class:`SiteLayout` (all of them plus
the data plate, the names of the global latents and of the discrete local latents the model enumerates,
which no guide samples: the inner ELBO sums them out). It does not sample, build networks or compute
ELBOs; those live in :mod:`pyro_iterative.guides` and :mod:`pyro_iterative.inference.inner_elbo`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.poutine import Trace
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

__all__ = [
    "LocalSite",
    "ObservedSite",
    "SiteLayout",
    "discover_sites",
    "model_mask",
]


def _is_real(support: constraints.Constraint) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def _plate_position(value_dim: int, event_dim: int, plate_dim: int) -> int:
    """Index of the plate's dimension in a value of ``value_dim`` dims with ``event_dim`` event dims."""
    return value_dim - event_dim + plate_dim


@dataclass(frozen=True)
class LocalSite:
    """A latent sample site inside the data plate, with q's unconstrained per-datapoint layout.

    The guides keep q's parameters for this site as two ``(batch, size)`` tensors (location and
    log-scale in unconstrained space); :meth:`unflatten` and :meth:`flatten` move between that layout
    and the site's own shape, and :meth:`distribution` builds q in the site's constrained space.
    """

    name: str
    support: constraints.Constraint
    event_dim: int
    unconstrained_event_dim: int
    unconstrained_shape: tuple[int, ...]
    plate_position: int
    frames: tuple[CondIndepStackFrame, ...]
    value_size: int  # values per datapoint in the site's own (constrained) space
    masked: bool = False  # the model masks it (poutine.mask or Distribution.mask): q is masked alike

    @property
    def size(self) -> int:
        """Number of unconstrained coordinates per datapoint."""
        return math.prod(self.unconstrained_shape)

    @cached_property
    def is_real(self) -> bool:
        """Whether the support is unconstrained (then q is a plain Normal)."""
        return _is_real(self.support)

    @cached_property
    def transform(self) -> torch.distributions.Transform:
        """Bijection from unconstrained space to the site's support (looked up once, on first use)."""
        return biject_to(self.support)

    def unflatten(self, flat: torch.Tensor) -> torch.Tensor:
        """Reshape a ``(batch, size)`` tensor to the site's unconstrained shape (datapoints on the plate dim)."""
        return flat.reshape((flat.shape[0],) + self.unconstrained_shape).movedim(0, self.plate_position)

    def flatten(self, value: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`unflatten`: the site's unconstrained value as ``(batch, size)``."""
        return value.movedim(self.plate_position, 0).reshape(value.shape[self.plate_position], -1)

    def distribution(
        self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None
    ) -> dist.TorchDistribution:
        """q for this site: a diagonal Normal in unconstrained space pushed through ``biject_to(support)``.

        :param loc: ``(batch, size)`` unconstrained locations.
        :param scale: ``(batch, size)`` unconstrained scales.
        :param validate_args: passed to the distributions (``None``: torch's default).
        """
        normal = dist.Normal(self.unflatten(loc), self.unflatten(scale), validate_args=validate_args)
        base = normal.to_event(self.unconstrained_event_dim)
        if self.is_real:
            return base  # a plain Normal keeps TraceMeanField_ELBO's analytic KL available
        return dist.TransformedDistribution(base, self.transform.with_cache(1), validate_args=validate_args)


@dataclass(frozen=True)
class ObservedSite:
    """An observed sample site inside the data plate; its values are the data the networks may encode."""

    name: str
    event_dim: int
    size: int

    def flatten(self, value: torch.Tensor, plate_dim: int) -> torch.Tensor:
        """The observed value as ``(batch, size)``: one flattened row per datapoint."""
        position = _plate_position(value.dim(), self.event_dim, plate_dim)
        if position < 0:
            raise ValueError(
                f"Observed site '{self.name}' has shape {tuple(value.shape)}, which has no datapoint dimension "
                f"for the data plate at dim={plate_dim}; observe one row per datapoint inside the plate."
            )
        return value.movedim(position, 0).reshape(value.shape[position], -1)


@dataclass(frozen=True)
class SiteLayout:
    """All a guide needs to know about a model's sites, read from one prototype trace."""

    plate: CondIndepStackFrame
    local_sites: tuple[LocalSite, ...]
    observed_sites: tuple[ObservedSite, ...]
    global_names: tuple[str, ...]
    max_plate_nesting: int
    enumerated_names: tuple[str, ...] = ()  # discrete local latents marked for parallel enumeration

    @property
    def plate_name(self) -> str:
        return self.plate.name

    @property
    def masked_names(self) -> tuple[str, ...]:
        """The local sites the model masks (q is masked alike, see :func:`model_mask`)."""
        return tuple(site.name for site in self.local_sites if site.masked)

    @property
    def data_size(self) -> int:
        """Number of observed values per datapoint, summed over observed sites."""
        return sum(site.size for site in self.observed_sites)


def model_mask(site: dict) -> torch.Tensor | bool | None:
    """The mask the model puts on a sample site, over its distribution's batch shape: ``poutine.mask``'s and every
    :meth:`~pyro.distributions.Distribution.mask` in the distribution (through ``to_event``), combined; ``None``
    when the site is not masked.

    Usage::

        model_mask(trace.nodes["z_3"])   # e.g. a (batch,) bool tensor: False where the sequence has ended
    """
    masks, fn, reinterpreted = [], site["fn"], 0
    while True:
        if isinstance(fn, dist.MaskedDistribution):
            # Pyro keeps the mask in MaskedDistribution._mask (a bool, or a tensor over the base batch shape).
            mask = fn._mask
            if isinstance(mask, torch.Tensor) and reinterpreted:
                mask = mask.expand(fn.batch_shape).any(tuple(range(-reinterpreted, 0)))
            masks.append(mask)
            fn = fn.base_dist
        elif isinstance(fn, dist.Independent):
            reinterpreted += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        else:
            break
    if site.get("mask") is not None:
        masks.append(site["mask"])
    if not masks:
        return None
    combined = masks[0]
    for mask in masks[1:]:
        combined = combined & mask
    return combined


def _is_enumerated(site: dict, plate: CondIndepStackFrame) -> bool:
    """Whether a latent site is discrete and marked for enumeration; refuse the enumerations no guide supports."""
    name, fn = site["name"], site["fn"]
    if not fn.support.is_discrete:
        if not fn.has_rsample:
            raise ValueError(
                f"Latent site '{name}' ({type(fn).__name__}) is not reparameterizable; these guides fit a "
                "reparameterized Normal in unconstrained space to every continuous latent. Hide it with "
                f"poutine.block(model, hide=['{name}']) and give it its own guide (for example in an AutoGuideList)."
            )
        return False
    how = site["infer"].get("enumerate")
    if how == "parallel" and plate in site["cond_indep_stack"]:
        return True
    if how == "parallel":
        raise ValueError(
            f"Latent site '{name}' ({type(fn).__name__}) is discrete and enumerated, but outside the data plate "
            f"'{plate.name}'; these guides sum out only discrete latents local to a datapoint. Move it inside the "
            f"plate, or hide it with poutine.block(model, hide=['{name}']) and give it its own guide."
        )
    advice = "enumerate='parallel'" if how else "@config_enumerate (or infer={'enumerate': 'parallel'})"
    raise ValueError(
        f"Latent site '{name}' ({type(fn).__name__}) is discrete and not marked for parallel enumeration"
        f"{f' (enumerate={how!r})' if how else ''}. Mark it with {advice} and train with "
        "TraceEnum_ELBO(max_plate_nesting=...): the guides then sum it out exactly inside the data plate."
    )


def _choose_plate(trace: Trace, plate_name: str | None) -> CondIndepStackFrame:
    frames = {f.name: f for site in trace.nodes.values() if site["type"] == "sample" for f in site["cond_indep_stack"]}
    if plate_name is not None:
        if plate_name not in frames:
            raise ValueError(
                f"plate_name='{plate_name}' names no plate of the model; its plates are {sorted(frames) or 'none'}."
            )
        return frames[plate_name]
    observed = [site for site in trace.nodes.values() if site["type"] == "sample" and site["is_observed"]]
    if not observed:
        raise ValueError(
            "The model observes nothing, so there is no data plate to amortize over. Pass the data to the model "
            "(obs=...) inside a pyro.plate over datapoints, or name the plate with plate_name=..."
        )
    common = set.intersection(*({f for f in site["cond_indep_stack"] if f.vectorized} for site in observed))
    if not common:
        names = ", ".join(f"'{site['name']}'" for site in observed)
        raise ValueError(
            f"The observed sites {names} are not all inside one vectorized pyro.plate. Wrap the datapoints in "
            "`with pyro.plate('data', N):` (local latents and observations inside it), or pass plate_name=..."
        )
    return min(common, key=lambda f: f.dim)  # the outermost plate: datapoints, not e.g. pixels


def _max_plate_nesting(trace: Trace) -> int:
    nesting = 0
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            nesting = max(nesting, len(site["fn"].batch_shape))
            nesting = max([nesting] + [-f.dim for f in site["cond_indep_stack"] if f.vectorized])
    return nesting


def discover_sites(trace: Trace, plate_name: str | None = None) -> SiteLayout:
    """Classify the sample sites of a prototype ``trace`` (observed sites included).

    Local latents are the unobserved sample sites inside the data plate: the plate named by
    ``plate_name``, or by default the outermost plate that holds every observed site. Every other
    unobserved site is global. Discrete local latents marked for parallel enumeration
    (``@config_enumerate``) are listed in ``enumerated_names``; every other discrete latent is refused.

    Usage::

        trace = poutine.trace(model).get_trace(x)
        layout = discover_sites(trace)
        [site.name for site in layout.local_sites]

    :raises ValueError: for a non-enumerated discrete or a non-reparameterized latent, a model without a data plate, a
        ``plate_name`` that does not exist, or a data plate without latent sites.
    """
    plate = _choose_plate(trace, plate_name)
    local, observed, global_names, enumerated = [], [], [], []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        in_plate = plate in site["cond_indep_stack"]
        if site["is_observed"]:
            if in_plate:
                value = site["value"]
                flat = ObservedSite(name, site["fn"].event_dim, 0).flatten(value, plate.dim)
                observed.append(ObservedSite(name, site["fn"].event_dim, flat.shape[1]))
            continue
        if _is_enumerated(site, plate):
            enumerated.append(name)
            continue
        if not in_plate:
            global_names.append(name)
            continue
        for frame in site["cond_indep_stack"]:
            if frame != plate and frame.full_size is not None and frame.full_size != frame.size:
                raise NotImplementedError(
                    f"Local site '{name}' is inside the subsampled plate '{frame.name}' as well as the data plate "
                    f"'{plate.name}'; only the data plate may be subsampled around local latents."
                )
        unconstrained = biject_to(site["fn"].support).inv(site["value"].detach())
        event_dim = site["fn"].event_dim + unconstrained.dim() - site["value"].dim()
        position = _plate_position(unconstrained.dim(), event_dim, plate.dim)
        shape = tuple(unconstrained.shape[:position] + unconstrained.shape[position + 1 :])
        local.append(
            LocalSite(
                name=name,
                support=site["fn"].support,
                event_dim=site["fn"].event_dim,
                unconstrained_event_dim=event_dim,
                unconstrained_shape=shape,
                plate_position=position,
                frames=tuple(f for f in site["cond_indep_stack"] if f.vectorized),
                value_size=site["value"].numel() // plate.size,
                masked=model_mask(site) is not None,
            )
        )
    if not local:
        raise ValueError(
            f"The model has no latent sample sites inside the data plate '{plate.name}', so there is nothing to "
            "infer per datapoint. Use pyro.infer.autoguide.AutoNormal for models with only global latents."
        )
    return SiteLayout(
        plate=plate,
        local_sites=tuple(local),
        observed_sites=tuple(observed),
        global_names=tuple(global_names),
        max_plate_nesting=_max_plate_nesting(trace),
        enumerated_names=tuple(enumerated),
    )
