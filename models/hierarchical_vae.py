"""Two-level hierarchical VAE generative model (the hierarchical MNIST model of Marino, Yue & Mandt, ICML 2018).

This module holds :class:`HierarchicalVAE`, the generative half only: a standard normal top latent ``z2``, a learned
conditional Gaussian prior ``p(z1 | z2)`` and a Bernoulli decoder ``p(x | z1)``. It does not hold an encoder, a guide
or a training loop; amortized and iterative guides live in :mod:`pyro_iterative`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import Tensor

from pyro_iterative.inference.networks import mlp

__all__ = ["HierarchicalVAE"]


class HierarchicalVAE(PyroModule):
    """
    Generative model with two levels of latent variables per datapoint, in the plate ``"data"`` at ``dim=-1``::

        z2 ~ N(0, I)                                   (top level, latent_dims[1] units)
        z1 | z2 ~ N(mu(z2), diag(sigma(z2)^2))         (bottom level, latent_dims[0] units)
        x | z1 ~ Bernoulli(sigmoid(decoder(z1)))

    The sample sites are ``"z2"``, ``"z1"`` and ``"x"``, in that order. The conditional prior network
    ``prior_net`` (``Linear -> ELU -> ... -> Linear``, output ``2 * latent_dims[0]``: means, then raw scales) gives
    ``sigma(z2) = softplus(raw) + min_scale``; the floor keeps the prior's log-density finite. The decoder is an MLP of
    the same shape producing logits. Both are plain :class:`torch.nn.Sequential` attributes: reading them on a
    :class:`~pyro.nn.PyroModule` issues a ``pyro.module`` statement, so their weights appear as Pyro params
    (``prior_net$$$0.weight``, ``decoder$$$0.weight``, ...) in every trace of the model.

    The likelihood is built with ``validate_args=False`` so that grey-level targets in ``[0, 1]`` are accepted as well
    as binary ones (the log-density is then the binary cross-entropy). The model also runs when a guide draws
    vectorized particles in an outer plate at ``dim=-2`` (latents of shape ``(P, B, d)``).

    Usage::

        model = HierarchicalVAE(data_dim=784, latent_dims=(64, 32))
        trace = pyro.poutine.trace(model).get_trace(x_train, subsample_size=100)
        trace.nodes["z2"]["value"].shape        # (100, 32)
        trace.nodes["z1"]["value"].shape        # (100, 64)
        probs = model.reconstruct(trace.nodes["z1"]["value"])

    :param int data_dim: number of pixels ``D``.
    :param latent_dims: ``(d1, d2)``: sizes of the bottom latent ``z1`` (next to the data) and the top latent ``z2``.
    :param hidden_sizes: widths of the hidden ELU layers of both the conditional prior network and the decoder (may
        be empty for linear networks).
    :param float min_scale: positive floor added to the conditional prior's standard deviations.
    """

    def __init__(
        self,
        data_dim: int = 784,
        latent_dims: Sequence[int] = (64, 32),
        hidden_sizes: Sequence[int] = (512, 512),
        *,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        latent_dims = tuple(latent_dims)
        if len(latent_dims) != 2:
            raise ValueError(f"latent_dims must be a pair (d1, d2): bottom and top latent sizes, got {latent_dims}")
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        named = (("data_dim", data_dim), ("latent_dims[0]", latent_dims[0]), ("latent_dims[1]", latent_dims[1]))
        for name, value in named:
            if int(value) != value or int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if any(h < 1 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {hidden_sizes}")
        min_scale = float(min_scale)
        if not min_scale > 0 or min_scale == float("inf"):
            raise ValueError(f"min_scale must be a finite positive number, got {min_scale}")
        self.data_dim = int(data_dim)
        self.latent_dims = (int(latent_dims[0]), int(latent_dims[1]))
        self.hidden_sizes = hidden_sizes
        self.min_scale = min_scale
        bottom, top = self.latent_dims
        self.prior_net = mlp(top, hidden_sizes, 2 * bottom)
        self.decoder = mlp(bottom, hidden_sizes, self.data_dim)

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> Tensor:
        """
        Run the generative model on a data set ``x`` of shape ``(N, data_dim)`` with values in ``[0, 1]``, optionally on
        a minibatch chosen by ``pyro.plate`` (``subsample_size``) or given explicitly (``subsample``, indices into
        ``x``).

        :return: the bottom latent sample ``z1``, of shape ``(B, d1)`` (or ``(P, B, d1)`` under an outer particle plate
            at ``dim=-2``).
        :raises ValueError: if ``x`` is not ``(N, data_dim)`` or the minibatch holds values outside ``[0, 1]``.
        """
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != self.data_dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"HierarchicalVAE expects x of shape (N, data_dim) with data_dim={self.data_dim}, got {shape}"
            )
        top = self.latent_dims[1]
        zeros = x.new_zeros(top)
        ones = x.new_ones(top)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            batch = x[idx]
            _check_unit_interval(batch, idx)
            z2 = pyro.sample("z2", dist.Normal(zeros, ones).to_event(1))
            z1 = pyro.sample("z1", self.conditional_prior(z2))
            logits = self.decoder(z1)
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=batch)
        return z1

    def conditional_prior(self, z2: Tensor) -> dist.Independent:
        """
        The learned prior ``p(z1 | z2) = N(mu(z2), diag(sigma(z2)^2))`` for top latents of shape ``(..., d2)``.

        Usage::

            prior = model.conditional_prior(torch.randn(16, 32))   # batch_shape (16,), event_shape (64,)
            z1 = prior.sample()

        :return: ``dist.Normal(loc, scale).to_event(1)`` with batch shape ``(...)``.
        """
        top = self.latent_dims[1]
        if not isinstance(z2, Tensor) or z2.dim() < 1 or z2.shape[-1] != top:
            shape = tuple(z2.shape) if isinstance(z2, Tensor) else type(z2).__name__
            raise ValueError(f"z2 must have last dimension latent_dims[1]={top}, got {shape}")
        loc, raw_scale = self.prior_net(z2).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw_scale) + self.min_scale).to_event(1)

    def reconstruct(self, z1: Tensor) -> Tensor:
        """
        Pixel probabilities ``sigmoid(decoder(z1))`` for bottom latents ``z1`` of shape ``(..., d1)``.

        Usage::

            probs = model.reconstruct(torch.randn(16, model.latent_dims[0]))   # (16, data_dim), in (0, 1)
        """
        bottom = self.latent_dims[0]
        if not isinstance(z1, Tensor) or z1.dim() < 1 or z1.shape[-1] != bottom:
            shape = tuple(z1.shape) if isinstance(z1, Tensor) else type(z1).__name__
            raise ValueError(f"z1 must have last dimension latent_dims[0]={bottom}, got {shape}")
        return torch.sigmoid(self.decoder(z1))





def _check_unit_interval(batch: Tensor, idx: Tensor) -> None:
    outside = ~((batch >= 0) & (batch <= 1))  # NaN counts as outside
    if bool(outside.any()):
        count = int(outside.sum())
        row, col = (int(i) for i in outside.nonzero()[0])
        raise ValueError(
            f"HierarchicalVAE has a Bernoulli likelihood and needs x in [0, 1]; this minibatch holds {count} values "
            f"outside it (NaN included), the first {float(batch[row, col])} in datapoint {int(idx[row])}, "
            f"column {col}: rescale the data (e.g. x / 255) or use GaussianVAE for real-valued data"
        )
