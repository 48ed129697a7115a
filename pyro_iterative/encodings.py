"""Encodings of ELBO gradients for the update networks.

Gradients of the ELBO span many orders of magnitude, so they are encoded before a network sees them.
Each encoding works on one datapoint's row at a time (never across the batch), so a datapoint's
encoding does not depend on its batch-mates or on the batch size. The network inputs themselves are
assembled in :mod:`pyro_iterative.iterative_guide`; this module only maps a ``(batch, size)`` gradient
to a ``(batch, factor * size)`` encoding.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = [
    "GRADIENT_ENCODINGS",
    "encode_gradient",
    "encoded_size",
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


def _lookup(name: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    if name not in GRADIENT_ENCODINGS:
        raise ValueError(f"Unknown gradient encoding '{name}'; choose one of {sorted(GRADIENT_ENCODINGS)}.")
    return GRADIENT_ENCODINGS[name]


def encoded_size(name: str, size: int) -> int:
    """Width of the encoding of a ``size``-wide gradient."""
    return _lookup(name)[1] * size


def encode_gradient(name: str, grad: torch.Tensor) -> torch.Tensor:
    """Encode a ``(batch, size)`` gradient row by row.

    Usage::

        encode_gradient("log_sign", torch.tensor([[0.5, -2.0]]))  # -> shape (1, 4)

    :param name: ``"log_sign"`` (log(|g| + 1e-5) and sign(g)) or ``"layer_norm"`` (per-datapoint
        standardisation).
    """
    return _lookup(name)[0](grad)
