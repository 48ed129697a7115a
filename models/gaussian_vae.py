"""Single-level VAE generative model with a Gaussian likelihood, for continuous data.

This module holds :class:`GaussianVAE`, the generative half only: a standard normal prior, an MLP decoder giving the
mean of each observed dimension and a learned per-dimension output scale. It does not hold an encoder, a guide or a
training loop; amortized and iterative guides live in :mod:`pyro_iterative`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_iterative.inference.networks import mlp

__all__ = ["GaussianVAE"]


class GaussianVAE(PyroModule):
    """
    Generative model ``z ~ N(0, I)``, ``x | z ~ N(decoder(z), diag(scale^2))`` with one latent ``z`` per datapoint in
    the plate ``"data"`` at ``dim=-1``.

    The decoder is an MLP ``Linear -> ELU -> ... -> Linear`` producing the mean, stored as a plain
    :class:`torch.nn.Sequential` ``self.decoder`` (so its weights appear as Pyro params ``decoder$$$0.weight``, ... in
    every trace). The output scale is learned per observed dimension: ``scale = min_scale + exp(log_scale)``, where
    ``log_scale`` is a :class:`torch.nn.Parameter` of shape ``(data_dim,)`` (the Pyro param ``"log_scale"``) and the
    floor ``min_scale`` keeps the likelihood bounded when a dimension is fitted exactly. The model also runs when a
    guide draws vectorized particles in an outer plate at ``dim=-2`` (``z`` of shape ``(P, B, d)``).

    Usage::

        model = GaussianVAE(data_dim=10, latent_dim=2)
        trace = pyro.poutine.trace(model).get_trace(x_train, subsample_size=64)
        trace.nodes["z"]["value"].shape         # (64, 2)
        mean = model.reconstruct(trace.nodes["z"]["value"])
        model.output_scale                      # (10,), the current per-dimension scale

    :param int data_dim: observed dimension ``D``.
    :param int latent_dim: latent dimension ``d``.
    :param hidden_sizes: widths of the hidden ELU layers of the decoder (may be empty for a linear decoder).
    :param float init_scale: initial output scale of every dimension (greater than ``min_scale``).
    :param float min_scale: positive floor of the output scale.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int = 16,
        hidden_sizes: Sequence[int] = (256, 256),
        *,
        init_scale: float = 1.0,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        for name, value in (("data_dim", data_dim), ("latent_dim", latent_dim)):
            if int(value) != value or int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if any(h < 1 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {hidden_sizes}")
        min_scale, init_scale = float(min_scale), float(init_scale)
        if not (0 < min_scale < math.inf):
            raise ValueError(f"min_scale must be a finite positive number, got {min_scale}")
        if not (min_scale < init_scale < math.inf):
            raise ValueError(f"init_scale must be finite and greater than min_scale={min_scale}, got {init_scale}")
        self.data_dim = int(data_dim)
        self.latent_dim = int(latent_dim)
        self.hidden_sizes = hidden_sizes
        self.min_scale = min_scale
        self.decoder = mlp(self.latent_dim, hidden_sizes, self.data_dim)
        self.log_scale = nn.Parameter(torch.full((self.data_dim,), math.log(init_scale - min_scale)))

    @property
    def output_scale(self) -> Tensor:
        """The per-dimension output standard deviation ``min_scale + exp(log_scale)``, shape ``(data_dim,)``."""
        return self.min_scale + self.log_scale.exp()

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> Tensor:
        """
        Run the generative model on a data set ``x`` of shape ``(N, data_dim)`` with finite real values, optionally on
        a minibatch chosen by ``pyro.plate`` (``subsample_size``) or given explicitly (``subsample``, indices into
        ``x``).

        :return: the latent sample ``z``, of shape ``(B, latent_dim)`` (or ``(P, B, latent_dim)`` under an outer
            particle plate at ``dim=-2``).
        :raises ValueError: if ``x`` is not a floating point ``(N, data_dim)`` tensor or the minibatch holds NaN or
            infinite values.
        """
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != self.data_dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"GaussianVAE expects x of shape (N, data_dim) with data_dim={self.data_dim}, got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"GaussianVAE expects floating point data, got dtype {x.dtype}: convert it with x.float()")
        zeros = x.new_zeros(self.latent_dim)
        ones = x.new_ones(self.latent_dim)
        scale = self.output_scale
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            batch = x[idx]
            bad = ~torch.isfinite(batch)
            if bool(bad.any()):
                row, col = (int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"GaussianVAE got {int(bad.sum())} NaN or infinite values in this minibatch, the first in "
                    f"datapoint {int(idx[row])}, column {col}: remove or impute them"
                )
            z = pyro.sample("z", dist.Normal(zeros, ones).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), scale).to_event(1), obs=batch)
        return z

    def reconstruct(self, z: Tensor) -> Tensor:
        """
        The likelihood's mean ``decoder(z)`` for latents ``z`` of shape ``(..., latent_dim)``.

        Usage::

            mean = model.reconstruct(torch.randn(16, model.latent_dim))   # (16, data_dim)
        """
        if not isinstance(z, Tensor) or z.dim() < 1 or z.shape[-1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must have last dimension latent_dim={self.latent_dim}, got {shape}")
        return self.decoder(z)
