"""A VAE whose prior is a mixture of Gaussians, with the cluster of each datapoint summed out by enumeration.

This module holds :class:`MixturePriorVAE` (Dilokthanakul et al., 2016; Jiang et al., "VaDE", IJCAI 2017), the
generative half only: a per-datapoint cluster ``c`` marked for parallel enumeration, a Gaussian latent ``z`` given the
cluster, and a Bernoulli decoder. Train it with ``TraceEnum_ELBO``; the guides of :mod:`pyro_iterative` sum ``c`` out.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import Tensor

from pyro_iterative.inference.networks import mlp

__all__ = ["MixturePriorVAE"]


class MixturePriorVAE(PyroModule):
    """
    Generative model ``c ~ Categorical(softmax(logits))``, ``z | c ~ N(mu_c, diag(sigma_c^2))``,
    ``x | z ~ Bernoulli(sigmoid(decoder(z)))``, one ``(c, z)`` per datapoint in the plate ``"data"`` at ``dim=-1``.

    The cluster site ``c`` is marked ``infer={"enumerate": "parallel"}``: under ``TraceEnum_ELBO`` (and inside the
    guides' own ELBO) it is summed out exactly, so no guide samples it. The mixture weights, cluster means (drawn
    once, spread over a sphere of radius 2) and cluster scales are learned parameters; the decoder is an MLP as in
    :class:`~pyro_iterative.models.vae.VAE` and, like it, accepts grey-level targets in ``[0, 1]``.

    Usage::

        model = MixturePriorVAE(data_dim=784, latent_dim=16, num_clusters=10)
        guide = IterativeGuide(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), TraceEnum_ELBO(max_plate_nesting=1))
        svi.step(x_train, subsample_size=100)
        clusters = discrete_posterior(model, guide, "c", x_test).argmax(-1)   # from pyro_iterative.evaluation

    :param int data_dim: number of observed values per datapoint.
    :param int latent_dim: dimension of ``z``.
    :param int num_clusters: number of mixture components.
    :param hidden_sizes: widths of the decoder's hidden layers.
    :param int seed: seed of the initial cluster means.
    """

    def __init__(
        self, data_dim: int = 784, latent_dim: int = 16, num_clusters: int = 10, hidden_sizes: Sequence[int] = (256,),
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("data_dim", data_dim), ("latent_dim", latent_dim), ("num_clusters", num_clusters)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        self.data_dim, self.latent_dim, self.num_clusters = int(data_dim), int(latent_dim), int(num_clusters)
        means = torch.randn(num_clusters, latent_dim, generator=torch.Generator().manual_seed(seed))
        self.cluster_logits = PyroParam(torch.zeros(num_clusters))
        self.cluster_locs = PyroParam(2.0 * means / means.norm(dim=-1, keepdim=True))
        self.cluster_scales = PyroParam(torch.ones(num_clusters, latent_dim), constraint=constraints.positive)
        self.decoder = mlp(self.latent_dim, tuple(hidden_sizes), self.data_dim)

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> Tensor:
        """Run the model on ``x`` of shape ``(N, data_dim)``, optionally on a minibatch; return ``z``."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != self.data_dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"MixturePriorVAE expects x of shape (N, {self.data_dim}), got {shape}")
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            c = pyro.sample("c", dist.Categorical(logits=self.cluster_logits), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(self.cluster_locs[c], self.cluster_scales[c]).to_event(1))
            logits = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x[idx])
        return z

    def sample(self, num: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``num`` binary datapoints drawn from the model and their clusters: ``(x, c)``.

        Usage::

            x, c = MixturePriorVAE(data_dim=20, latent_dim=2, num_clusters=3).sample(500)
        """
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            probs = torch.softmax(self.cluster_logits, -1)
            c = torch.multinomial(probs, num, replacement=True, generator=generator)
            noise = torch.randn(num, self.latent_dim, generator=generator)
            z = self.cluster_locs[c] + self.cluster_scales[c] * noise
            pixels = torch.sigmoid(self.decoder(z))
            x = torch.bernoulli(pixels, generator=generator)
        return x, c
