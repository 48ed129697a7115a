"""Single-level VAE generative model (the MNIST model of Marino, Yue & Mandt, ICML 2018).

This module holds :class:`VAE`, the generative half only: a standard normal prior and a Bernoulli decoder MLP. It does
not hold an encoder, a guide or a training loop; amortized and iterative guides live in :mod:`pyro_iterative`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor

from pyro_iterative.inference.networks import mlp

__all__ = ["VAE"]


class VAE(PyroModule):
    """
    Generative model ``z ~ N(0, I)``, ``x | z ~ Bernoulli(sigmoid(decoder(z)))`` with one latent ``z`` per datapoint
    in the plate ``"data"`` at ``dim=-1``.

    The decoder is an MLP ``Linear -> ELU -> ... -> Linear`` producing logits. It is deliberately a plain
    :class:`torch.nn.Sequential` stored as ``self.decoder``: accessing it on a :class:`~pyro.nn.PyroModule` issues a
    ``pyro.module`` statement, so its weights appear as Pyro params (named ``decoder$$$0.weight``, ...) in every
    trace of the model.

    The likelihood is built with ``validate_args=False`` so that grey-level targets in ``[0, 1]`` are accepted as
    well as binary ones (the log-density is then the binary cross-entropy, which is not a normalized density for
    non-binary targets).

    Usage::

        model = VAE(data_dim=784, latent_dim=64)
        trace = pyro.poutine.trace(model).get_trace(x_train, subsample_size=100)
        trace.nodes["z"]["value"].shape         # (100, 64)
        probs = model.reconstruct(trace.nodes["z"]["value"])

    :param int data_dim: number of pixels ``D``.
    :param int latent_dim: latent dimension ``d``.
    :param hidden_sizes: widths of the hidden layers of the decoder (may be empty for a linear decoder).
    """

    def __init__(self, data_dim: int = 784, latent_dim: int = 64, hidden_sizes: Sequence[int] = (512, 512)) -> None:
        super().__init__()
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        for name, value in (("data_dim", data_dim), ("latent_dim", latent_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if any(h < 1 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {hidden_sizes}")
        self.data_dim = int(data_dim)
        self.latent_dim = int(latent_dim)
        self.hidden_sizes = hidden_sizes
        self.decoder = mlp(self.latent_dim, hidden_sizes, self.data_dim)

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> Tensor:
        """
        Run the generative model on a data set ``x`` of shape ``(N, data_dim)`` with values in ``[0, 1]``, optionally on
        a minibatch chosen by ``pyro.plate`` (``subsample_size``) or given explicitly (``subsample``, indices into
        ``x``).

        :return: the latent sample ``z``, of shape ``(B, latent_dim)`` (or ``(P, B, latent_dim)`` under an outer
            particle plate at ``dim=-2``).
        """
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != self.data_dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            last = x.shape[-1] if isinstance(x, Tensor) and x.dim() > 0 else None
            raise ValueError(
                f"VAE expects x of shape (N, data_dim) with data_dim={self.data_dim}, got {shape} "
                f"(last dimension {last})"
            )
        zeros = x.new_zeros(self.latent_dim)
        ones = x.new_ones(self.latent_dim)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            z = pyro.sample("z", dist.Normal(zeros, ones).to_event(1))
            logits = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x[idx])
        return z

    def reconstruct(self, z: Tensor) -> Tensor:
        """
        Pixel probabilities ``sigmoid(decoder(z))`` for latents ``z`` of shape ``(..., latent_dim)``.

        Usage::

            probs = model.reconstruct(torch.randn(16, model.latent_dim))   # (16, data_dim), in (0, 1)
        """
        if not isinstance(z, Tensor) or z.dim() < 1 or z.shape[-1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must have last dimension latent_dim={self.latent_dim}, got {shape}")
        return torch.sigmoid(self.decoder(z))
