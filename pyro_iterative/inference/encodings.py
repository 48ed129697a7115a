"""Encodings for the update networks: ELBO gradients, and prediction errors read from a model trace.

Gradients of the ELBO span many orders of magnitude, so they are encoded before a network sees them.
Each encoding works on one datapoint's row at a time (never across the batch), so a datapoint's
encoding does not depend on its batch-mates or on the batch size. :func:`prediction_errors` is the
paper's alternative input for hierarchical models, derived from any model's trace. The network inputs
themselves are assembled in :mod:`pyro_iterative.guides.iterative`.
"""

from __future__ import annotations

from typing import Callable

import torch
from pyro.poutine import Trace

from .sites import SiteLayout

__all__ = [
    "DATA_ENCODINGS",
    "GRADIENT_ENCODINGS",
    "encode_data",
    "encode_gradient",
    "encoded_size",
    "prediction_errors",
]


def _log_sign(grad: torch.Tensor) -> torch.Tensor:
    # As in the paper's MNIST configuration: log-magnitude and sign of each coordinate.
    return torch.cat([torch.log(grad.abs() + 1e-5), torch.sign(grad)], dim=-1)


def _layer_norm(grad: torch.Tensor) -> torch.Tensor:
    # Normalised over each datapoint's own coordinates (the reference code normalised across the batch).
    return torch.nn.functional.layer_norm(grad, grad.shape[-1:])


#: name -> (function, output size per input coordinate)
GRADIENT_ENCODINGS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], int]] = {
    "log_sign": (_log_sign, 2),
    "layer_norm": (_layer_norm, 1),
}


#: name -> how the networks read a datapoint's observed values, coordinate by coordinate (never across the batch)
DATA_ENCODINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # sign(x) log(1 + |x|): the identity's shape near 0, logarithmic growth beyond, so counts in the hundreds or raw
    # measurements of any magnitude reach the first layer at a scale an initialised network can take.
    "symlog": lambda x: torch.sign(x) * torch.log1p(x.abs()),
    "none": lambda x: x,
}


def encode_data(name: str, data: torch.Tensor) -> torch.Tensor:
    """Encode a ``(batch, data_size)`` block of observed values for a network, coordinate by coordinate.

    Usage::

        encode_data("symlog", torch.tensor([[0.0, 1.0, 500.0]]))   # [[0.00, 0.69, 6.22]]

    :param name: a key of :data:`DATA_ENCODINGS` (``"symlog"``: ``sign(x) log(1 + |x|)``; ``"none"``: as is).
    """
    if name not in DATA_ENCODINGS:
        raise ValueError(f"Unknown data encoding '{name}'; choose one of {sorted(DATA_ENCODINGS)}.")
    return DATA_ENCODINGS[name](data)


def _lookup(name: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    if name not in GRADIENT_ENCODINGS:
        raise ValueError(f"Unknown gradient encoding '{name}'; choose one of {sorted(GRADIENT_ENCODINGS)}.")
    return GRADIENT_ENCODINGS[name]


def encoded_size(name: str, size: int) -> int:
    """Width of the encoding of a ``size``-wide gradient.

    Usage::

        encoded_size("log_sign", 128)   # 256: log-magnitude and sign of each coordinate
    """
    return _lookup(name)[1] * size


def encode_gradient(name: str, grad: torch.Tensor) -> torch.Tensor:
    """Encode a ``(batch, size)`` gradient row by row.

    Usage::

        encode_gradient("log_sign", torch.tensor([[0.5, -2.0]]))  # -> shape (1, 4)

    :param name: ``"log_sign"`` (``log(|g| + 1e-5)`` and ``sign(g)``) or ``"layer_norm"`` (per-datapoint
        standardisation).
    """
    return _lookup(name)[0](grad)


def _rows(value: torch.Tensor, event_dim: int, plate_dim: int, particle_dim: int | None) -> torch.Tensor:
    batch_dims = value.dim() - event_dim
    if particle_dim is not None and batch_dims >= -particle_dim:
        value = value.mean(batch_dims + particle_dim)  # average over the inner particles
    position = value.dim() - event_dim + plate_dim
    return value.movedim(position, 0).reshape(value.shape[position], -1)


def prediction_errors(model_trace: Trace, layout: SiteLayout, particle_dim: int | None = None) -> torch.Tensor:
    """Prediction errors per datapoint, ``(batch, size)``, from a model trace replayed against q.

    For every observed site in the data plate, the value minus the mean of its distribution (e.g.
    ``x - E[x | z]``); for every local latent site, the sample minus the mean of its prior, divided by the
    prior's standard deviation where it has one (``(z - mu_prior) / sigma_prior``). Rows are averaged over
    a particle dimension if given. Works for any model: nothing model-specific is read.

    Usage::

        _, model_trace = inner.trace(args, kwargs, params, batch, {})
        prediction_errors(model_trace, layout)   # linear-Gaussian: [x - (W z + b), z]
    """
    rows = []
    for site in layout.observed_sites:
        node = model_trace.nodes[site.name]
        rows.append(_rows(node["value"] - node["fn"].mean, site.event_dim, layout.plate.dim, particle_dim))
    for site in layout.local_sites:
        node = model_trace.nodes[site.name]
        error = node["value"] - node["fn"].mean
        try:
            error = error / node["fn"].stddev
        except NotImplementedError:
            pass
        rows.append(_rows(error, site.event_dim, layout.plate.dim, particle_dim))
    return torch.cat(rows, dim=-1)
