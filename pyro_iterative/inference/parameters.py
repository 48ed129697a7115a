"""lambda, q's per-datapoint parameters: their layout, their starting point and their reading as q.

For every local site a guide keeps lambda as one ``(batch, 2 * size)`` tensor: unconstrained locations, then
log-scales. :func:`initial_lambda` gives lambda_0; :func:`local_params` reads lambda as q's ``(loc, scale)``,
clamping log-scales to a safe range and, for constrained sites, bounding locations smoothly. Building q from these
(a Normal pushed through ``biject_to``) is :meth:`~pyro_iterative.inference.sites.LocalSite.distribution`; choosing
lambda is the guides' business.
"""

from __future__ import annotations

import math

import torch

from .sites import SiteLayout

__all__ = [
    "CONSTRAINED_LOC_BOUND",
    "CONSTRAINED_LOG_SCALE_RANGE",
    "LOG_SCALE_RANGE",
    "LocalParams",
    "initial_lambda",
    "local_params",
]

#: Per local site name, q's ``(loc, scale)`` in unconstrained space, each of shape ``(batch, size)``.
LocalParams = dict[str, tuple[torch.Tensor, torch.Tensor]]

#: q's unconstrained log-scales are clamped to this range for real-valued sites (scales from about 1e-4 to 150) ...
LOG_SCALE_RANGE = (-9.0, 5.0)
#: ... and to this one for constrained sites, whose transform (e.g. exp) would overflow at larger scales.
CONSTRAINED_LOG_SCALE_RANGE = (-9.0, 2.0)
#: Constrained sites' unconstrained locations are read as ``B * tanh(loc / B)`` with this ``B``: the identity for
#: ``|loc|`` well below it, never beyond it, so that a transform such as exp neither underflows to 0 (where a Gamma
#: prior's log-density is infinite) nor overflows, whatever an untrained network outputs.
CONSTRAINED_LOC_BOUND = 15.0


def initial_lambda(
    layout: SiteLayout, batch_size: int, like: torch.Tensor, init_loc: float = 0.0, init_scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """lambda_0 for every local site: ``(batch, 2 * size)`` holding ``init_loc`` and ``log(init_scale)``.

    Usage::

        lam = initial_lambda(layout, 64, like=x)   # dtype and device of x
    """
    lam = {}
    for site in layout.local_sites:
        value = like.new_empty(batch_size, 2 * site.size)
        value[:, : site.size] = init_loc
        value[:, site.size :] = math.log(init_scale)
        lam[site.name] = value
    return lam


def local_params(layout: SiteLayout, lam: dict[str, torch.Tensor]) -> LocalParams:
    """Split each site's lambda into q's ``(loc, scale)``, clamping log-scales to :data:`LOG_SCALE_RANGE`
    (real-valued sites) or :data:`CONSTRAINED_LOG_SCALE_RANGE` (the others, whose locations are also bounded
    smoothly by :data:`CONSTRAINED_LOC_BOUND`).

    Usage::

        loc, scale = local_params(guide.layout, {"z": lam})["z"]
    """
    params = {}
    for site in layout.local_sites:
        loc, log_scale = lam[site.name].split(site.size, dim=-1)
        if site.is_real:
            params[site.name] = (loc, log_scale.clamp(*LOG_SCALE_RANGE).exp())
        else:
            loc = CONSTRAINED_LOC_BOUND * torch.tanh(loc / CONSTRAINED_LOC_BOUND)
            params[site.name] = (loc, log_scale.clamp(*CONSTRAINED_LOG_SCALE_RANGE).exp())
    return params
