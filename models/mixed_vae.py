"""A VAE with observed sites of mixed likelihoods: continuous features (Normal, learned scales) and binary ones.

This module holds :class:`MixedVAE`, shaped like the causal-effect VAE of Louizos et al. (2017): a few local latents
explain a handful of continuous covariates and binary indicators of each datapoint. It is a test bed for guides on
small, heterogeneous data; it holds no guide.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_iterative.inference.networks import mlp

__all__ = ["MixedVAE"]


class MixedVAE(PyroModule):
    """
    ``z ~ N(0, I_d)``; ``x_continuous | z ~ N(mu(z), diag(s^2))`` with a learned scale ``s`` per feature;
    ``x_binary | z ~ Bernoulli(logits(z))``. Both observed sites lie in the plate ``"data"`` at ``dim=-1``; a datapoint
    is one row of ``x``: its ``num_continuous`` continuous features, then its ``num_binary`` binary ones.

    Usage::

        model = MixedVAE(num_continuous=5, num_binary=2, latent_dim=3)
        x = model.sample(300, seed=0)                        # (300, 7), the last two columns 0/1
        trace = pyro.poutine.trace(model).get_trace(x, subsample_size=100)

    :param int num_continuous: continuous features per datapoint.
    :param int num_binary: binary features per datapoint.
    :param int latent_dim: local latent dimensions.
    :param hidden_sizes: hidden ELU widths of the decoder.
    """

    def __init__(
        self, num_continuous: int = 5, num_binary: int = 2, latent_dim: int = 3, hidden_sizes: Sequence[int] = (16,)
    ) -> None:
        super().__init__()
        if min(num_continuous, num_binary, latent_dim) < 1:
            raise ValueError(f"need at least one continuous, binary and latent dimension, got "
                             f"{num_continuous}, {num_binary}, {latent_dim}")
        self.num_continuous, self.num_binary, self.latent_dim = num_continuous, num_binary, latent_dim
        self.decoder = mlp(latent_dim, hidden_sizes, num_continuous + num_binary)
        self.log_scale = nn.Parameter(torch.zeros(num_continuous))

    @property
    def data_dim(self) -> int:
        return self.num_continuous + self.num_binary

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> Tensor:
        """Score (or, under ``poutine.uncondition``, draw) the rows of ``x``, ``(N, num_continuous + num_binary)``."""
        if x.dim() != 2 or x.shape[-1] != self.data_dim:
            raise ValueError(f"MixedVAE expects x of shape (N, {self.data_dim}), got {tuple(x.shape)}")
        c = self.num_continuous
        zeros = x.new_zeros(self.latent_dim)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            out = self.decoder(z)
            scale = self.log_scale.exp() + 1e-3
            pyro.sample("x_continuous", dist.Normal(out[..., :c], scale).to_event(1), obs=x[idx, :c])
            pyro.sample("x_binary", dist.Bernoulli(logits=out[..., c:]).to_event(1), obs=x[idx, c:])
        return z

    def sample(self, num: int, seed: int = 0) -> Tensor:
        """``num`` rows drawn from the model (continuous features, then binary ones), with its own generator."""
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            trace = pyro.poutine.trace(pyro.poutine.uncondition(self)).get_trace(
                torch.zeros(num, self.data_dim, dtype=self.log_scale.dtype))
        return torch.cat([trace.nodes["x_continuous"]["value"], trace.nodes["x_binary"]["value"]], dim=-1)
