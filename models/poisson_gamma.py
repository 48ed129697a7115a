"""A one-layer deep exponential family: positive (Gamma) local latents and Poisson counts.

This module holds :class:`PoissonGamma` (Ranganath et al., 2015, one layer; Poisson factorization): every
datapoint's counts are Poisson with rates ``z @ W``, ``z`` a vector of Gamma-distributed factors. A test bed for
guides on constrained latents and data of large magnitude (counts in the hundreds); it holds no guide.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

__all__ = ["PoissonGamma"]


class PoissonGamma(PyroModule):
    """
    ``z ~ Gamma(shape, rate)^K``, ``x | z ~ Poisson(z @ W)`` with ``W = softplus(raw) * weight_scale`` of shape
    ``(K, D)`` learned as a point estimate; one ``z`` per datapoint in the plate ``"data"`` at ``dim=-1``.

    Usage::

        model = PoissonGamma(data_dim=30, num_factors=4, weight_scale=50.0)
        x = model.sample(500, seed=0)                 # counts, many in the hundreds
        trace = pyro.poutine.trace(model).get_trace(x, subsample_size=100)

    :param int data_dim: count features ``D``.
    :param int num_factors: Gamma factors ``K`` per datapoint.
    :param float shape: the prior's Gamma shape.
    :param float rate: the prior's Gamma rate.
    :param float weight_scale: scale of the loadings (large for counts in the hundreds).
    """

    def __init__(self, data_dim: int = 30, num_factors: int = 4, *, shape: float = 1.0, rate: float = 1.0,
                 weight_scale: float = 1.0) -> None:
        super().__init__()
        self.data_dim, self.num_factors = data_dim, num_factors
        self.shape, self.rate, self.weight_scale = float(shape), float(rate), float(weight_scale)
        self.raw_weight = nn.Parameter(torch.randn(num_factors, data_dim))

    @property
    def weight(self) -> Tensor:
        """The loadings ``W``, ``(K, D)``, positive."""
        return nn.functional.softplus(self.raw_weight) * self.weight_scale

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> Tensor:
        """Score (or, under ``poutine.uncondition``, draw) the count rows of ``x``, ``(N, data_dim)``."""
        if x.dim() != 2 or x.shape[-1] != self.data_dim:
            raise ValueError(f"PoissonGamma expects x of shape (N, {self.data_dim}), got {tuple(x.shape)}")
        weight = self.weight
        concentration = x.new_full((self.num_factors,), self.shape)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            z = pyro.sample("z", dist.Gamma(concentration, self.rate).to_event(1))
            pyro.sample("x", dist.Poisson(z @ weight + 1e-6).to_event(1), obs=x[idx])
        return z

    def sample(self, num: int, seed: int = 0) -> Tensor:
        """``num`` count rows drawn from the model, with its own generator."""
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            trace = pyro.poutine.trace(pyro.poutine.uncondition(self)).get_trace(
                torch.zeros(num, self.data_dim, dtype=self.raw_weight.dtype))
        return trace.nodes["x"]["value"]
