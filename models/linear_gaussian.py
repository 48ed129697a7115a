"""Linear-Gaussian latent variable model with closed-form evidence, posterior and ELBO.

This module holds :class:`LinearGaussian`, a Pyro model whose marginal likelihood, exact posterior, best mean-field
posterior and mean-field ELBO are all available in closed form, which makes it the reference test bed for checking
inference code, and :func:`synthetic_linear_gaussian`, which builds such a model and draws training and test sets
from it. It does not hold any guide or inference algorithm; those live in :mod:`pyro_iterative`.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor

__all__ = ["LinearGaussian", "synthetic_linear_gaussian"]


class LinearGaussian(PyroModule):
    r"""
    Linear-Gaussian model (probabilistic PCA / factor analysis with isotropic noise)::

        z ~ N(0, I_d)
        x | z ~ N(W z + b, sigma^2 I_D)

    with ``W`` of shape ``(D, d)``. Every datapoint gets its own latent ``z`` inside the plate ``"data"`` at
    ``dim=-1``; the model also runs when a guide draws vectorized particles in an outer plate at ``dim=-2`` (``z`` of
    shape ``(P, B, d)``).

    All closed forms below are per datapoint, exact, and computed in the dtype of ``W``. With the posterior precision
    :math:`\Lambda = I + W^\top W / \sigma^2`:

    * :meth:`log_likelihood` is :math:`\log N(x; b, W W^\top + \sigma^2 I)`;
    * :meth:`posterior` is :math:`N(\Lambda^{-1} W^\top (x - b) / \sigma^2, \Lambda^{-1})`;
    * :meth:`posterior_diagonal` is the best fully factorized Gaussian (same mean, variances
      :math:`1 / \Lambda_{ii}`);
    * :meth:`optimal_diagonal_elbo` is the ELBO of that best factorized Gaussian;
    * :meth:`elbo` is the ELBO of any factorized Gaussian.

    Usage::

        model = LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5)
        x = model.sample(100, seed=1)
        log_px = model.log_likelihood(x)            # shape (100,)
        q = model.posterior_diagonal(x)             # exact here: orthogonal columns
        assert torch.allclose(model.optimal_diagonal_elbo(x), log_px)

    :param torch.Tensor weight: loading matrix ``W`` of shape ``(D, d)``.
    :param torch.Tensor bias: offset ``b`` of shape ``(D,)``, same dtype and device as ``weight``.
    :param float noise_scale: observation noise standard deviation ``sigma > 0``.
    :param bool learn: if ``False`` (default) ``W`` and ``b`` are buffers and the model has no parameters; if ``True``
        they are :class:`torch.nn.Parameter` s (and hence Pyro params when the model runs).
    """

    def __init__(self, weight: Tensor, bias: Tensor, noise_scale: float, *, learn: bool = False) -> None:
        super().__init__()
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-d tensor of shape (data_dim, latent_dim), got {_describe(weight)}")
        if not weight.is_floating_point():
            raise ValueError(f"weight must have a floating point dtype, got {weight.dtype}")
        if not isinstance(bias, Tensor) or bias.shape != weight.shape[:1]:
            raise ValueError(
                f"bias must be a 1-d tensor of shape ({weight.shape[0]},) matching weight {tuple(weight.shape)}, "
                f"got {_describe(bias)}"
            )
        if bias.dtype != weight.dtype or bias.device != weight.device:
            raise ValueError(
                f"bias ({bias.dtype}, {bias.device}) must have the same dtype and device as weight "
                f"({weight.dtype}, {weight.device})"
            )
        noise_scale = float(noise_scale)
        if not math.isfinite(noise_scale) or noise_scale <= 0:
            raise ValueError(f"noise_scale must be a finite positive number, got {noise_scale}")
        weight = weight.detach().clone()
        bias = bias.detach().clone()
        if learn:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
        self.noise_scale = noise_scale
        self.learn = learn

    @classmethod
    def orthogonal(
        cls,
        data_dim: int = 10,
        latent_dim: int = 2,
        noise_scale: float = 0.5,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        *,
        learn: bool = False,
    ) -> LinearGaussian:
        """
        Build a model whose loading matrix has mutually orthogonal columns, so that ``W^T W`` and hence the exact
        posterior covariance are diagonal (the best mean-field posterior is exact). Columns are a random orthonormal
        basis scaled by norms evenly spread in ``[1, 3]``; the bias is standard normal. Randomness comes from a
        private :class:`torch.Generator` seeded with ``seed`` (the global RNG is untouched).

        Usage::

            model = LinearGaussian.orthogonal(data_dim=784, latent_dim=16, noise_scale=0.3, seed=3)

        :param int data_dim: observed dimension ``D`` (at least ``latent_dim``).
        :param int latent_dim: latent dimension ``d`` (at least 1).
        :param float noise_scale: observation noise standard deviation.
        :param int seed: seed of the generator.
        :param torch.dtype dtype: floating point dtype of ``W`` and ``b``.
        :param bool learn: forwarded to the constructor.
        """
        if latent_dim < 1 or data_dim < latent_dim:
            raise ValueError(
                f"orthogonal() needs 1 <= latent_dim <= data_dim, got data_dim={data_dim}, latent_dim={latent_dim}"
            )
        generator = torch.Generator().manual_seed(seed)
        gaussian = torch.randn(data_dim, latent_dim, generator=generator, dtype=torch.float64)
        basis, _ = torch.linalg.qr(gaussian)  # (D, d), orthonormal columns
        weight = basis * torch.linspace(1.0, 3.0, latent_dim, dtype=torch.float64)  # linspace(1, 3, 1) == [1.]
        bias = torch.randn(data_dim, generator=generator, dtype=torch.float64)
        return cls(weight.to(dtype), bias.to(dtype), noise_scale, learn=learn)

    @property
    def data_dim(self) -> int:
        """Observed dimension ``D``."""
        return self.weight.shape[0]

    @property
    def latent_dim(self) -> int:
        """Latent dimension ``d``."""
        return self.weight.shape[1]

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> Tensor:
        """
        Run the generative model on a data set ``x`` of shape ``(N, D)``, optionally on a minibatch chosen by
        ``pyro.plate`` (``subsample_size``) or given explicitly (``subsample``, indices into ``x``).

        :return: the latent sample ``z``, of shape ``(B, d)`` (or ``(P, B, d)`` under an outer particle plate).
        """
        self._check_data(x)
        weight, bias = self.weight, self.bias
        d = weight.shape[1]
        zeros = weight.new_zeros(d)
        ones = weight.new_ones(d)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            z = pyro.sample("z", dist.Normal(zeros, ones).to_event(1))
            pyro.sample("x", dist.Normal(z @ weight.T + bias, self.noise_scale).to_event(1), obs=x[idx])
        return z

    # ------------------------------------------------------------------ closed forms

    def posterior_precision(self) -> Tensor:
        r"""
        The posterior precision :math:`\Lambda = I + W^\top W / \sigma^2`, shape ``(d, d)`` (the same for every
        datapoint).

        Usage::

            precision = model.posterior_precision()
        """
        weight = self.weight
        eye = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
        return eye + weight.T @ weight / self.noise_scale**2

    def log_likelihood(self, x: Tensor) -> Tensor:
        """
        Exact marginal log-likelihood ``log N(x; b, W W^T + sigma^2 I)`` of each row of ``x``, computed with the
        Woodbury identity and the matrix determinant lemma (only ``d x d`` factorizations).

        Usage::

            log_px = model.log_likelihood(x)   # x: (N, D) -> (N,)

        :param torch.Tensor x: data of shape ``(..., D)``.
        :return: tensor of shape ``(...)``.
        """
        x = self._as_model_dtype(x)
        weight, var = self.weight, self.noise_scale**2
        data_dim = weight.shape[0]
        chol = torch.linalg.cholesky(self.posterior_precision())
        resid = x - self.bias
        # r^T C^{-1} r = (|r|^2 - |L^{-1} W^T r|^2 / sigma^2) / sigma^2  with  Lambda = L L^T.
        proj = torch.linalg.solve_triangular(chol, (resid @ weight).unsqueeze(-1), upper=False).squeeze(-1)
        quad = (resid.pow(2).sum(-1) - proj.pow(2).sum(-1) / var) / var
        # log det C = D log sigma^2 + log det Lambda.
        logdet = data_dim * math.log(var) + 2 * chol.diagonal().log().sum()
        return -0.5 * (data_dim * math.log(2 * math.pi) + logdet + quad)

    def posterior(self, x: Tensor) -> dist.MultivariateNormal:
        """
        Exact Gaussian posterior ``p(z | x)`` for each row of ``x``.

        Usage::

            post = model.posterior(x)          # batch_shape (N,), event_shape (d,)
            post.mean, post.covariance_matrix

        :param torch.Tensor x: data of shape ``(..., D)``.
        :return: :class:`~pyro.distributions.MultivariateNormal` with batch shape ``(...)``.
        """
        loc, precision = self._posterior_loc_and_precision(x)
        return dist.MultivariateNormal(loc, precision_matrix=precision)

    def posterior_diagonal(self, x: Tensor) -> dist.Independent:
        """
        The fully factorized Gaussian closest to the exact posterior in ``KL(q || p)``: the exact posterior mean and
        variances ``1 / Lambda_ii`` (not the marginal posterior variances).

        Usage::

            q = model.posterior_diagonal(x)
            elbo = model.elbo(x, q.base_dist.loc, q.base_dist.scale)

        :param torch.Tensor x: data of shape ``(..., D)``.
        :return: ``dist.Normal(loc, scale).to_event(1)`` with batch shape ``(...)``.
        """
        loc, precision = self._posterior_loc_and_precision(x)
        scale = precision.diagonal().rsqrt().expand_as(loc)
        return dist.Normal(loc, scale).to_event(1)

    def optimal_diagonal_elbo(self, x: Tensor) -> Tensor:
        """
        ELBO of :meth:`posterior_diagonal`, i.e. the best ELBO any fully factorized Gaussian guide can reach::

            log p(x) - KL(q* || p(z | x)) = log p(x) - 0.5 * (sum_i log Lambda_ii - log det Lambda)

        It equals :meth:`log_likelihood` exactly when ``W`` has orthogonal columns.

        Usage::

            gap = model.log_likelihood(x) - model.optimal_diagonal_elbo(x)   # >= 0

        :param torch.Tensor x: data of shape ``(..., D)``.
        :return: tensor of shape ``(...)``.
        """
        precision = self.posterior_precision()
        logdet = 2 * torch.linalg.cholesky(precision).diagonal().log().sum()
        gap = 0.5 * (precision.diagonal().log().sum() - logdet)
        return self.log_likelihood(x) - gap

    def elbo(self, x: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """
        Exact ELBO ``E_q[log p(x, z) - log q(z)]`` of a factorized Gaussian ``q = N(loc, diag(scale^2))`` for each
        datapoint, in closed form (expected log-likelihood + entropy - cross-entropy to the prior; no sampling).

        Usage::

            elbo = model.elbo(x, loc, scale)   # x: (N, D), loc/scale: (N, d) -> (N,)

        :param torch.Tensor x: data of shape ``(..., D)``.
        :param torch.Tensor loc: variational means, shape broadcastable with ``(..., d)``.
        :param torch.Tensor scale: variational standard deviations (positive), same shape rules as ``loc``.
        :return: tensor of the broadcast batch shape.
        """
        x = self._as_model_dtype(x)
        weight, bias, var = self.weight, self.bias, self.noise_scale**2
        data_dim, latent_dim = weight.shape
        for name, value in (("loc", loc), ("scale", scale)):
            if not isinstance(value, Tensor) or value.dim() < 1 or value.shape[-1] != latent_dim:
                raise ValueError(f"{name} must have last dimension latent_dim={latent_dim}, got {_describe(value)}")
        if not bool((scale > 0).all()):
            raise ValueError("scale must be strictly positive")
        loc = loc.to(weight.dtype)
        scale = scale.to(weight.dtype)
        variance = scale.pow(2)
        # E_q |x - W z - b|^2 = |x - W m - b|^2 + sum_j s_j^2 |W_:j|^2
        resid = x - loc @ weight.T - bias
        expected_sq = resid.pow(2).sum(-1) + variance @ weight.pow(2).sum(0)
        expected_loglik = -0.5 * (data_dim * math.log(2 * math.pi * var) + expected_sq / var)
        # E_q log N(z; 0, I) = -0.5 * (d log 2 pi + |m|^2 + sum_j s_j^2)
        cross_entropy = 0.5 * (latent_dim * math.log(2 * math.pi) + loc.pow(2).sum(-1) + variance.sum(-1))
        entropy = 0.5 * latent_dim * math.log(2 * math.pi * math.e) + scale.log().sum(-1)
        return expected_loglik + entropy - cross_entropy

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0) -> Tensor:
        """
        Draw ``num`` datapoints from the model with a private :class:`torch.Generator` (the global RNG is untouched).

        Usage::

            x = model.sample(500, seed=1)   # (500, D), dtype and device of W

        :param int num: number of datapoints (non-negative).
        :param int seed: seed of the generator.
        :return: tensor of shape ``(num, D)``.
        """
        if num < 0:
            raise ValueError(f"num must be non-negative, got {num}")
        weight, bias = self.weight.detach(), self.bias.detach()
        data_dim, latent_dim = weight.shape
        generator = torch.Generator(device=weight.device).manual_seed(seed)
        opts = dict(dtype=weight.dtype, device=weight.device, generator=generator)
        z = torch.randn(num, latent_dim, **opts)
        noise = torch.randn(num, data_dim, **opts)
        return z @ weight.T + bias + self.noise_scale * noise

    # ------------------------------------------------------------------ helpers

    def _posterior_loc_and_precision(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self._as_model_dtype(x)
        precision = self.posterior_precision()
        rhs = (x - self.bias) @ self.weight / self.noise_scale**2  # (..., d)
        loc = torch.cholesky_solve(rhs.unsqueeze(-1), torch.linalg.cholesky(precision)).squeeze(-1)
        return loc, precision

    def _check_data(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"x must have shape (N, data_dim={self.weight.shape[0]}), got {_describe(x)}")

    def _as_model_dtype(self, x: Tensor) -> Tensor:
        data_dim = self.weight.shape[0]
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != data_dim:
            raise ValueError(f"x must have shape (..., data_dim={data_dim}), got {_describe(x)}")
        return x.to(self.weight.dtype)


# ---------------------------------------------------------------- synthetic data


def synthetic_linear_gaussian(
    num_train: int = 1000,
    num_test: int = 500,
    *,
    data_dim: int = 10,
    latent_dim: int = 2,
    noise_scale: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[LinearGaussian, Tensor, Tensor]:
    """
    A linear-Gaussian model with orthogonal loadings (:meth:`LinearGaussian.orthogonal`, seeded with ``seed``) and
    independent training and test sets drawn from it. The two sets are drawn with two further seeds derived from
    ``seed`` (through :class:`numpy.random.SeedSequence`), so they differ from each other and from the stream that
    built the model; the result depends only on the arguments, and the global RNGs are untouched.

    Usage::

        model, x_train, x_test = synthetic_linear_gaussian(1000, 500, data_dim=10, latent_dim=2, seed=0)
        exact = model.log_likelihood(x_test).mean()   # the target any guide's ELBO is compared with

    :param int num_train: number of training points.
    :param int num_test: number of test points.
    :param int data_dim: observed dimension ``D``.
    :param int latent_dim: latent dimension ``d`` (at most ``data_dim``).
    :param float noise_scale: observation noise standard deviation.
    :param int seed: non-negative seed of the model and of the two data sets.
    :param torch.dtype dtype: floating point dtype of the model and the data (float64 keeps the closed forms exact).
    :return: ``(model, x_train, x_test)`` with data of shapes ``(num_train, data_dim)`` and ``(num_test, data_dim)``.
    """
    for name, value in (("num_train", num_train), ("num_test", num_test), ("seed", seed)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    model = LinearGaussian.orthogonal(
        data_dim=data_dim, latent_dim=latent_dim, noise_scale=noise_scale, seed=int(seed), dtype=dtype
    )
    train_seed, test_seed = (int(s) for s in np.random.SeedSequence(int(seed)).generate_state(2))
    return model, model.sample(int(num_train), seed=train_seed), model.sample(int(num_test), seed=test_seed)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"
