"""Binarization of data in ``[0, 1]`` for Bernoulli likelihoods: dynamic (a fresh draw each call) or static (seeded).

This module holds :func:`binarize`, :func:`static_binarize` and :data:`BINARIZE_MODES` (the names of the ways training
data are binarized). It does not load any data set (see :mod:`pyro_iterative.data.mnist` and
:mod:`pyro_iterative.data.arrays`) and does not decide which mode a run uses; the training code does.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BINARIZE_MODES", "binarize", "static_binarize"]

#: How training data in [0, 1] are turned into the values a Bernoulli likelihood scores: a fresh draw per epoch
#: (``"dynamic"``), one fixed draw (``"static"``), or as they are (``"none"``).
BINARIZE_MODES = ("dynamic", "static", "none")


def _check_unit_interval(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating point tensor of probabilities, got {kind}")
    # Written so that NaN fails the check too.
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError(f"{name} must have values in [0, 1], got range [{x.min().item()}, {x.max().item()}]")


def binarize(x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """
    Dynamic binarization: one Bernoulli draw per entry with probability ``x``, same shape, dtype and device. Call it
    anew for every minibatch (or epoch) so the model sees a fresh binarization each time.

    Usage::

        x_batch = binarize(x_train[idx])
        x_batch = binarize(x_train[idx], generator=torch.Generator().manual_seed(0))   # reproducible

    :param torch.Tensor x: probabilities in ``[0, 1]``.
    :param torch.Generator generator: optional generator (on ``x``'s device); the global RNG is used otherwise.
    :raises ValueError: if ``x`` has values outside ``[0, 1]`` (or NaN) or is not floating point.
    """
    _check_unit_interval(x)
    return torch.bernoulli(x, generator=generator)


def static_binarize(x: Tensor, seed: int = 0) -> Tensor:
    """
    Static binarization: a single Bernoulli draw from a private generator seeded with ``seed``, so that the same input
    and seed always give the same binary tensor (use it for test sets). The global RNG is untouched.

    On CPU (torch 2.x) the draw uses the same uniform stream as :func:`torch.rand`, so do not binarize synthetic data
    made by ``torch.rand`` with a generator seeded with the same ``seed``: every non-trivial pixel would become 0.

    Usage::

        x_test = static_binarize(split.x_test, seed=0)

    :param torch.Tensor x: probabilities in ``[0, 1]``.
    :param int seed: seed of the draw.
    :raises ValueError: if ``x`` has values outside ``[0, 1]`` (or NaN) or is not floating point.
    """
    _check_unit_interval(x)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=generator)
