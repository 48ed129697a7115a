"""Tests of the closed forms and the Pyro model of :class:`pyro_iterative.models.LinearGaussian`."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_iterative.models import LinearGaussian, synthetic_linear_gaussian


def make_generic(data_dim: int = 6, latent_dim: int = 3, noise_scale: float = 0.7, seed: int = 0) -> LinearGaussian:
    """A model with a dense, non-orthogonal loading matrix."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64)
    weight[:, 1] += weight[:, 0]  # make sure columns are far from orthogonal
    bias = torch.randn(data_dim, generator=g, dtype=torch.float64)
    return LinearGaussian(weight, bias, noise_scale)


@pytest.fixture
def orth():
    return LinearGaussian.orthogonal(data_dim=8, latent_dim=3, noise_scale=0.5, seed=1)


@pytest.fixture
def generic():
    return make_generic()


def marginal_covariance(model):
    w = model.weight
    return w @ w.T + model.noise_scale**2 * torch.eye(w.shape[0], dtype=w.dtype)


def joint_conditioning(model, x):
    """Posterior mean and covariance of z | x by conditioning the joint Gaussian of (z, x) (no precision matrices)."""
    w = model.weight
    cov_xx = marginal_covariance(model)
    cov_zx = w.T  # Cov(z, x) = W^T
    gain = torch.linalg.solve(cov_xx, cov_zx.T).T  # Cov(z,x) Cov(x,x)^{-1}, shape (d, D)
    mean = (x - model.bias) @ gain.T
    cov = torch.eye(w.shape[1], dtype=w.dtype) - gain @ cov_zx.T
    return mean, cov


# ---------------------------------------------------------------- construction


def test_constructor_validation():
    w = torch.randn(5, 2, dtype=torch.float64)
    b = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="weight"):
        LinearGaussian(torch.randn(5, dtype=torch.float64), b, 1.0)
    with pytest.raises(ValueError, match="bias"):
        LinearGaussian(w, torch.zeros(4, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="dtype"):
        LinearGaussian(w, b.float(), 1.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise_scale"):
            LinearGaussian(w, b, bad)
    with pytest.raises(ValueError, match="latent_dim"):
        LinearGaussian.orthogonal(data_dim=2, latent_dim=3)


def test_learn_false_has_no_parameters(orth):
    assert list(orth.parameters()) == []
    assert {name for name, _ in orth.named_buffers()} == {"weight", "bias"}
    x = orth.sample(4)
    trace = poutine.trace(orth, param_only=True).get_trace(x)
    assert len(trace.nodes) == 0


def test_learn_true_registers_parameters():
    model = LinearGaussian.orthogonal(data_dim=5, latent_dim=2, learn=True)
    assert {name for name, _ in model.named_parameters()} == {"weight", "bias"}
    assert list(model.buffers()) == []
    x = model.sample(4)
    trace = poutine.trace(model, param_only=True).get_trace(x)
    assert set(trace.nodes) == {"weight", "bias"}
    model.log_likelihood(x).sum().backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


def test_constructor_copies_inputs():
    w = torch.randn(4, 2, dtype=torch.float64)
    b = torch.zeros(4, dtype=torch.float64)
    model = LinearGaussian(w, b, 1.0)
    w.zero_()
    assert model.weight.abs().sum() > 0


def test_orthogonal_gives_diagonal_posterior(orth):
    gram = orth.weight.T @ orth.weight
    off_diagonal = gram - torch.diag(gram.diagonal())
    assert off_diagonal.abs().max() < 1e-12
    norms = gram.diagonal().sqrt()
    assert torch.allclose(norms, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    precision = orth.posterior_precision()
    assert (precision - torch.diag(precision.diagonal())).abs().max() < 1e-12
    _, cov = joint_conditioning(orth, orth.sample(3))
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 1e-12
    # and a dense model really is not diagonal
    precision = make_generic().posterior_precision()
    assert (precision - torch.diag(precision.diagonal())).abs().max() > 0.1


def test_orthogonal_is_seeded_and_respects_dtype():
    a = LinearGaussian.orthogonal(seed=3)
    b = LinearGaussian.orthogonal(seed=3)
    c = LinearGaussian.orthogonal(seed=4)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.allclose(a.weight, c.weight)
    single = LinearGaussian.orthogonal(dtype=torch.float32)
    assert single.weight.dtype == torch.float32
    x = single.sample(3)
    assert x.dtype == torch.float32
    assert single.log_likelihood(x).dtype == torch.float32
    assert single(x).dtype == torch.float32


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("which", ["orth", "generic"])
def test_log_likelihood_matches_torch_mvn(which, orth, generic):
    model = orth if which == "orth" else generic
    x = model.sample(7, seed=2)
    reference = torch.distributions.MultivariateNormal(model.bias, covariance_matrix=marginal_covariance(model))
    expected = reference.log_prob(x)
    actual = model.log_likelihood(x)
    assert actual.shape == (7,)
    assert torch.allclose(actual, expected, atol=1e-10, rtol=0)
    # arbitrary batch shape
    assert model.log_likelihood(x.reshape(7, 1, -1)).shape == (7, 1)


def test_log_likelihood_matches_importance_sampling():
    # A weakly informative model so that the prior is a decent proposal.
    g = torch.Generator().manual_seed(5)
    model = LinearGaussian(
        0.6 * torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64), 1.0
    )
    x = model.sample(3, seed=6)
    num = 200_000
    z = torch.randn(num, 1, 2, generator=g, dtype=torch.float64)
    log_w = dist.Normal(z @ model.weight.T + model.bias, 1.0).log_prob(x).sum(-1)  # (num, 3)
    estimate = torch.logsumexp(log_w, 0) - math.log(num)
    w = (log_w - log_w.max(0).values).exp()
    rel_se = w.std(0) / (w.mean(0) * math.sqrt(num))  # standard error of log of the mean (delta method)
    exact = model.log_likelihood(x)
    assert ((estimate - exact).abs() < 5 * rel_se).all(), (estimate, exact, rel_se)
    assert (rel_se < 0.02).all()


@pytest.mark.parametrize("which", ["orth", "generic"])
def test_posterior_matches_joint_conditioning(which, orth, generic):
    model = orth if which == "orth" else generic
    x = model.sample(5, seed=3)
    mean, cov = joint_conditioning(model, x)
    post = model.posterior(x)
    assert isinstance(post, dist.MultivariateNormal)
    assert post.batch_shape == (5,) and post.event_shape == (model.latent_dim,)
    assert torch.allclose(post.mean, mean, atol=1e-10, rtol=0)
    assert torch.allclose(post.covariance_matrix, cov.expand(5, -1, -1), atol=1e-10, rtol=0)


def test_bayes_rule_pointwise(generic):
    # log p(z|x) = log p(z) + log p(x|z) - log p(x) at an arbitrary z
    model = generic
    x = model.sample(4, seed=8)
    z = torch.randn(4, model.latent_dim, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    log_prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_lik = dist.Normal(z @ model.weight.T + model.bias, model.noise_scale).log_prob(x).sum(-1)
    lhs = model.posterior(x).log_prob(z)
    rhs = log_prior + log_lik - model.log_likelihood(x)
    assert torch.allclose(lhs, rhs, atol=1e-10, rtol=0)


@pytest.mark.parametrize("which", ["orth", "generic"])
def test_posterior_diagonal(which, orth, generic):
    model = orth if which == "orth" else generic
    x = model.sample(5, seed=4)
    mean, cov = joint_conditioning(model, x)
    q = model.posterior_diagonal(x)
    assert isinstance(q, dist.Independent) and isinstance(q.base_dist, dist.Normal)
    assert q.batch_shape == (5,) and q.event_shape == (model.latent_dim,)
    assert torch.allclose(q.base_dist.loc, mean, atol=1e-10, rtol=0)
    # optimal mean-field variances are the inverse diagonal of the precision = inverse of the covariance
    expected_scale = torch.linalg.inv(cov).diagonal().rsqrt().expand(5, -1)
    assert torch.allclose(q.base_dist.scale, expected_scale, atol=1e-10, rtol=0)
    if which == "orth":
        assert torch.allclose(q.base_dist.scale, cov.diagonal().sqrt().expand(5, -1), atol=1e-10, rtol=0)
    else:  # mean-field underestimates the marginal variances
        assert (q.base_dist.scale < cov.diagonal().sqrt() - 1e-3).all()


def test_optimal_diagonal_elbo(orth, generic):
    x = orth.sample(6, seed=5)
    assert torch.allclose(orth.optimal_diagonal_elbo(x), orth.log_likelihood(x), atol=1e-10, rtol=0)
    x = generic.sample(6, seed=5)
    gap = generic.log_likelihood(x) - generic.optimal_diagonal_elbo(x)
    assert (gap > 1e-2).all()
    # the gap is KL(q* || p(z|x)), computed independently from the two distributions
    q = generic.posterior_diagonal(x)
    q_mvn = dist.MultivariateNormal(q.base_dist.loc, scale_tril=torch.diag_embed(q.base_dist.scale))
    kl = torch.distributions.kl_divergence(q_mvn, generic.posterior(x))
    assert torch.allclose(gap, kl, atol=1e-10, rtol=0)


@pytest.mark.parametrize("which", ["orth", "generic"])
def test_optimal_diagonal_elbo_is_elbo_of_posterior_diagonal_and_maximal(which, orth, generic):
    model = orth if which == "orth" else generic
    x = model.sample(6, seed=6)
    q = model.posterior_diagonal(x)
    loc, scale = q.base_dist.loc, q.base_dist.scale
    best = model.elbo(x, loc, scale)
    assert torch.allclose(best, model.optimal_diagonal_elbo(x), atol=1e-10, rtol=0)
    g = torch.Generator().manual_seed(7)
    for _ in range(5):
        worse_loc = model.elbo(x, loc + 0.1 * torch.randn(loc.shape, generator=g, dtype=loc.dtype), scale)
        worse_scale = model.elbo(x, loc, scale * torch.exp(0.1 * torch.randn(loc.shape, generator=g, dtype=loc.dtype)))
        assert (worse_loc < best).all() and (worse_scale < best).all()


def test_elbo_matches_direct_monte_carlo(generic):
    model = generic
    x = model.sample(3, seed=10)
    g = torch.Generator().manual_seed(11)
    loc = torch.randn(3, model.latent_dim, generator=g, dtype=torch.float64)
    scale = 0.2 + torch.rand(3, model.latent_dim, generator=g, dtype=torch.float64)
    q = dist.Normal(loc, scale).to_event(1)
    z = loc + scale * torch.randn(100_000, 3, model.latent_dim, generator=g, dtype=torch.float64)
    log_joint = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(
        z @ model.weight.T + model.bias, model.noise_scale
    ).log_prob(x).sum(-1)
    samples = log_joint - q.log_prob(z)
    estimate, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    assert ((model.elbo(x, loc, scale) - estimate).abs() < 5 * se).all()


def test_elbo_matches_pyro_trace_elbo(generic):
    model = generic
    num_data = 4
    x = model.sample(num_data, seed=12)
    g = torch.Generator().manual_seed(13)
    loc = torch.randn(num_data, model.latent_dim, generator=g, dtype=torch.float64)
    scale = 0.3 + torch.rand(num_data, model.latent_dim, generator=g, dtype=torch.float64)

    def guide(x, subsample_size=None, subsample=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            pyro.sample("z", dist.Normal(loc[idx], scale[idx]).to_event(1))

    # Vectorized particles: the model runs with z of shape (P, B, d) under an outer plate at dim=-2.
    elbo = Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(14)
    estimates = torch.tensor([-elbo.loss(model, guide, x) for _ in range(50)], dtype=torch.float64)
    mean, se = estimates.mean(), estimates.std() / math.sqrt(len(estimates))
    exact = model.elbo(x, loc, scale).sum()
    assert se > 0
    assert abs(mean - exact) < 5 * se, (mean, exact, se)
    assert abs(mean - model.log_likelihood(x).sum()) > 5 * se  # the test can tell a bad guide from the evidence


def test_elbo_validation(generic):
    x = generic.sample(2)
    loc = torch.zeros(2, generic.latent_dim, dtype=torch.float64)
    with pytest.raises(ValueError, match="loc"):
        generic.elbo(x, loc[:, :-1], torch.ones_like(loc))
    with pytest.raises(ValueError, match="scale"):
        generic.elbo(x, loc, torch.ones(2, generic.latent_dim + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        generic.elbo(x, loc, torch.zeros_like(loc))
    with pytest.raises(ValueError, match="data_dim"):
        generic.log_likelihood(x[:, :-1])
    with pytest.raises(ValueError, match="data_dim"):
        generic(x[:, :-1])
    with pytest.raises(ValueError, match="data_dim"):
        generic(x[0])


# ---------------------------------------------------------------- sampling and the Pyro model


def test_sample(generic):
    a = generic.sample(20_000, seed=1)
    assert a.shape == (20_000, generic.data_dim) and a.dtype == torch.float64
    assert torch.equal(a, generic.sample(20_000, seed=1))
    assert not torch.allclose(a[:10], generic.sample(10, seed=2))
    state = torch.get_rng_state()
    generic.sample(5, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    cov = marginal_covariance(generic)
    se_mean = cov.diagonal().sqrt() / math.sqrt(len(a))
    assert ((a.mean(0) - generic.bias).abs() < 5 * se_mean).all()
    # standard error of a sample covariance of Gaussian data: sqrt((C_ii C_jj + C_ij^2) / n)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / len(a)).sqrt()
    assert ((torch.cov(a.T) - cov).abs() < 5 * se_cov).all()
    assert generic.sample(0).shape == (0, generic.data_dim)


def test_model_trace_full_batch(orth):
    x = orth.sample(10)
    trace = poutine.trace(orth).get_trace(x)
    assert trace.nodes["z"]["value"].shape == (10, orth.latent_dim)
    assert trace.nodes["x"]["is_observed"] and torch.equal(trace.nodes["x"]["value"], x)
    for site in ("z", "x"):
        frames = trace.nodes[site]["cond_indep_stack"]
        assert [(f.name, f.dim, f.size) for f in frames] == [("data", -1, 10)]
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].shape == (10,)
    # log p(x, z) from the trace agrees with the closed-form densities
    z = trace.nodes["z"]["value"]
    expected = orth.posterior(x).log_prob(z) + orth.log_likelihood(x)
    assert torch.allclose(trace.nodes["z"]["log_prob"] + trace.nodes["x"]["log_prob"], expected, atol=1e-10)


def test_model_subsampling(orth):
    x = orth.sample(20)
    trace = poutine.trace(orth).get_trace(x, subsample_size=7)
    assert trace.nodes["z"]["value"].shape == (7, orth.latent_dim)
    assert trace.nodes["x"]["value"].shape == (7, orth.data_dim)
    assert trace.nodes["x"]["scale"] == pytest.approx(20 / 7)
    idx = trace.nodes["data"]["value"]
    assert torch.equal(trace.nodes["x"]["value"], x[idx])
    subsample = torch.tensor([3, 0, 17])
    trace = poutine.trace(orth).get_trace(x, subsample=subsample)
    assert torch.equal(trace.nodes["x"]["value"], x[subsample])
    assert trace.nodes["z"]["value"].shape == (3, orth.latent_dim)


def test_model_under_outer_particle_plate(orth):
    x = orth.sample(12)
    with pyro.plate("particles", 5, dim=-2):
        trace = poutine.trace(orth).get_trace(x, subsample_size=4)
    assert trace.nodes["z"]["value"].shape == (5, 4, orth.latent_dim)
    trace.compute_log_prob()
    assert trace.nodes["z"]["log_prob"].shape == (5, 4)
    assert trace.nodes["x"]["log_prob"].shape == (5, 4)
    # a guide-provided z of shape (P, B, d) flows through the model
    z = torch.zeros(5, 12, orth.latent_dim, dtype=torch.float64)
    with pyro.plate("particles", 5, dim=-2):
        trace = poutine.trace(poutine.condition(orth, data={"z": z})).get_trace(x)
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].shape == (5, 12)


# ---------------------------------------------------------------- synthetic linear-Gaussian data


def test_synthetic_linear_gaussian():
    model, x_train, x_test = synthetic_linear_gaussian(300, 200, data_dim=6, latent_dim=3, noise_scale=0.2, seed=1)
    assert isinstance(model, LinearGaussian)
    assert (model.data_dim, model.latent_dim, model.noise_scale) == (6, 3, 0.2)
    assert x_train.shape == (300, 6) and x_test.shape == (200, 6) and x_train.dtype == torch.float64
    reference = LinearGaussian.orthogonal(data_dim=6, latent_dim=3, noise_scale=0.2, seed=1)
    assert torch.equal(model.weight, reference.weight)
    # the data come from the model: the sample mean is near the bias, the mean log-likelihood is typical
    assert torch.allclose(x_train.mean(0), model.bias, atol=0.5)
    assert not torch.equal(x_train[:200], x_test)
    _, same_size_train, same_size_test = synthetic_linear_gaussian(50, 50, seed=1)
    assert not torch.allclose(same_size_train, same_size_test, atol=0.1)  # independent draws, not one stream twice
    again = synthetic_linear_gaussian(300, 200, data_dim=6, latent_dim=3, noise_scale=0.2, seed=1)
    assert torch.equal(again[1], x_train) and torch.equal(again[2], x_test)
    other = synthetic_linear_gaussian(300, 200, data_dim=6, latent_dim=3, noise_scale=0.2, seed=2)
    assert not torch.equal(other[0].weight, model.weight) and not torch.equal(other[1], x_train)
    # the draws are not the model's own sample stream at seed 1 (the seeds of the data differ from the model's)
    assert not torch.equal(model.sample(300, seed=1), x_train)
    defaults = synthetic_linear_gaussian()
    assert defaults[1].shape == (1000, 10) and defaults[2].shape == (500, 10) and defaults[0].latent_dim == 2
    single = synthetic_linear_gaussian(4, 2, dtype=torch.float32)[1]
    assert single.dtype == torch.float32


def test_synthetic_linear_gaussian_bad_arguments():
    for kwargs in ({"num_train": -1}, {"num_test": 2.5}, {"seed": -3}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            synthetic_linear_gaussian(**kwargs)
    with pytest.raises(ValueError, match="latent_dim"):
        synthetic_linear_gaussian(data_dim=2, latent_dim=3)
