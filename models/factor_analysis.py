"""Factor analysis: a few Gaussian factors, a linear map and a learned noise scale per observed dimension.

This module holds :class:`FactorAnalysis`, the linear-Gaussian model with everything learned (loadings, offsets and
heteroscedastic noise, as point estimates); its exact counterpart with fixed parameters is
:class:`~pyro_iterative.models.LinearGaussian`. It holds no guide.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

__all__ = ["FactorAnalysis"]


class FactorAnalysis(PyroModule):
    """
    ``z ~ N(0, I_k)``, ``x | z ~ N(W z + b, diag(psi))`` with ``W`` ``(D, k)``, ``b`` and ``psi = softplus(raw)``
    learned; one ``z`` per datapoint in the plate ``"data"`` at ``dim=-1``.

    Usage::

        model = FactorAnalysis(data_dim=20, num_factors=3)
        x = model.sample(500, seed=0)
        trace = pyro.poutine.trace(model).get_trace(x, subsample_size=100)

    :param int data_dim: observed dimension ``D``.
    :param int num_factors: factors ``k``.
    """

    def __init__(self, data_dim: int = 20, num_factors: int = 3) -> None:
        super().__init__()
        self.data_dim, self.num_factors = data_dim, num_factors
        self.weight = nn.Parameter(torch.randn(data_dim, num_factors))
        self.bias = nn.Parameter(torch.zeros(data_dim))
        self.raw_noise = nn.Parameter(torch.zeros(data_dim))

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> Tensor:
        """Score (or, under ``poutine.uncondition``, draw) the rows of ``x``, ``(N, data_dim)``."""
        if x.dim() != 2 or x.shape[-1] != self.data_dim:
            raise ValueError(f"FactorAnalysis expects x of shape (N, {self.data_dim}), got {tuple(x.shape)}")
        noise = nn.functional.softplus(self.raw_noise) + 1e-3
        zeros = x.new_zeros(self.num_factors)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.weight.T + self.bias, noise).to_event(1), obs=x[idx])
        return z

    def sample(self, num: int, seed: int = 0) -> Tensor:
        """``num`` rows drawn from the model, with its own generator."""
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            trace = pyro.poutine.trace(pyro.poutine.uncondition(self)).get_trace(
                torch.zeros(num, self.data_dim, dtype=self.weight.dtype))
        return trace.nodes["x"]["value"]
