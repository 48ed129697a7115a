"""Which datapoints a guide call is about: :class:`Batch` and :func:`locate_batch`.

A :class:`Batch` is the data plate's subsample indices and full size for one call; :func:`locate_batch` asks a
model which datapoints it draws, by running it only up to its first site inside the data plate. Scoring the
model at those datapoints lives in :mod:`pyro_iterative.inference.inner_elbo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.runtime import NonlocalExit
from pyro.poutine.util import site_is_subsample

from .sites import SiteLayout

__all__ = [
    "Batch",
    "locate_batch",
]


@dataclass(frozen=True)
class Batch:
    """The datapoints of one guide call: indices into the data plate and the plate's full size.

    Usage::

        batch = Batch(torch.tensor([3, 17, 29]), full_size=40)
        len(batch)                      # 3
        with batch.plate(layout):       # the model's data plate, pinned to these datapoints
            ...
    """

    indices: torch.Tensor
    full_size: int

    def __len__(self) -> int:
        return self.indices.shape[0]

    def plate(self, layout: SiteLayout) -> pyro.plate:
        """A fresh data plate pinned to these indices (constructing it records its subsample site)."""
        return pyro.plate(layout.plate_name, self.full_size, subsample=self.indices, dim=layout.plate.dim)


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
