"""InnerELBO against the closed-form ELBO of the linear-Gaussian model, with and without subsampling, on both paths."""

import pyro.poutine as poutine
import pytest
import torch

from pyro_iterative.inference import Batch, InnerELBO
from pyro_iterative.inference.sites import discover_sites
from pyro_iterative.models import LinearGaussian


@pytest.fixture
def setting():
    model = LinearGaussian.orthogonal(data_dim=5, latent_dim=3, noise_scale=0.7, seed=2)
    x = model.sample(40, seed=3)
    layout = discover_sites(poutine.trace(model).get_trace(x))
    generator = torch.Generator().manual_seed(0)
    loc = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    scale = torch.rand(40, 3, generator=generator, dtype=torch.float64) + 0.2
    return model, x, layout, loc, scale


def assert_within_standard_errors(estimates, exact, num=5.0):
    """``estimates``: (repeats, batch) independent estimates; each column's mean within ``num`` standard errors."""
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / estimates.shape[0] ** 0.5
    assert ((mean - exact).abs() < num * standard_error + 1e-9).all(), (mean - exact) / standard_error


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
def test_matches_the_closed_form_elbo_per_datapoint(setting, fast):
    model, x, layout, loc, scale = setting
    inner = InnerELBO(model, layout, num_particles=2000, fast=fast)
    batch = Batch(torch.arange(40), 40)
    estimates = torch.stack([inner((x,), {}, {"z": (loc, scale)}, batch, {})[0] for _ in range(20)])
    assert estimates.shape == (20, 40)
    assert_within_standard_errors(estimates, model.elbo(x, loc, scale))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
def test_subsampling_scale_is_divided_out(setting, fast):
    model, x, layout, loc, scale = setting
    inner = InnerELBO(model, layout, num_particles=2000, fast=fast)
    indices = torch.tensor([3, 17, 29])
    params = {"z": (loc[indices], scale[indices])}
    runs = [inner((x,), {"subsample_size": 3}, params, Batch(indices, 40), {}) for _ in range(20)]
    assert all(torch.equal(trace.nodes["x"]["value"], x[indices]) for _, trace in runs)  # the given datapoints
    assert_within_standard_errors(torch.stack([elbo for elbo, _ in runs]), model.elbo(x[indices], *params["z"]))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
def test_gradient_of_the_sum_is_each_datapoints_own_gradient(setting, fast):
    model, x, layout, loc, scale = setting
    inner = InnerELBO(model, layout, num_particles=2000, fast=fast)
    loc = loc.clone().requires_grad_()

    def gradient():
        elbo, _ = inner((x,), {}, {"z": (loc, scale)}, Batch(torch.arange(40), 40), {})
        return torch.autograd.grad(elbo.sum(), loc)[0]

    estimates = torch.stack([gradient() for _ in range(20)])
    exact_loc = loc.detach().clone().requires_grad_()
    (exact,) = torch.autograd.grad(model.elbo(x, exact_loc, scale).sum(), exact_loc)
    assert_within_standard_errors(estimates.flatten(1), exact.flatten())


def test_rejects_zero_particles(setting):
    model, _, layout, _, _ = setting
    with pytest.raises(ValueError, match="num_particles"):
        InnerELBO(model, layout, num_particles=0)
