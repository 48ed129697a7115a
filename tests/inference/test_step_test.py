"""The paired test of a move of q (common random numbers, antithetic pairs) against the linear-Gaussian model's
closed-form ELBO, and InnerELBO.pair_means in both ways of drawing the particles."""

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pyro_iterative.inference import Batch, InnerELBO
from pyro_iterative.inference.sites import discover_sites
from pyro_iterative.inference.step_test import improves, paired_gain
from pyro_iterative.models import LinearGaussian


@pytest.fixture
def setting():
    # orthogonal loadings: the best diagonal q is the exact posterior, and with the posterior's scales and any
    # location, log w is linear in the draw, so an antithetic pair's mean is the exact ELBO
    model = LinearGaussian.orthogonal(data_dim=5, latent_dim=3, noise_scale=0.7, seed=2)
    x = model.sample(100, seed=3)
    layout = discover_sites(poutine.trace(model).get_trace(x))
    posterior = model.posterior_diagonal(x)
    return model, x, layout, posterior.mean, posterior.stddev, Batch(torch.arange(100), 100)


@pytest.mark.parametrize("vectorize", [None, False], ids=["plate", "one-at-a-time"])
def test_pair_means_average_each_draw_with_its_mirror_image(setting, vectorize):
    model, x, layout, loc, scale, batch = setting
    shifted = loc + 0.5
    inner = InnerELBO(model, layout, num_particles=6, antithetic=True, vectorize=vectorize)
    weights = inner.log_weights((x,), {}, {"z": (shifted, scale)}, batch, {})
    assert weights.shape == (6, 100) and weights.std(0).min() > 1e-3  # the draws themselves differ ...
    pairs = inner.pair_means(weights)
    assert pairs.shape == (3, 100)  # ... and each pair's mean is the exact ELBO
    assert torch.allclose(pairs, model.elbo(x, shifted, scale).expand(3, 100), atol=1e-9)
    independent = InnerELBO(model, layout, num_particles=6)
    assert independent.pair_means(weights) is weights
    with pytest.raises(ValueError, match="expected 6 particles"):
        inner.pair_means(weights[:4])


def test_improves_judges_a_move_by_its_effect_on_common_random_numbers(setting):
    model, x, layout, loc, scale, batch = setting
    optimum, away = {"z": (loc, scale)}, {"z": (loc + 0.3, scale)}
    exact = model.elbo(x, loc + 0.3, scale) - model.elbo(x, loc, scale)
    assert (exact < 0).all()
    pyro.set_rng_seed(0)
    pairs = InnerELBO(model, layout, num_particles=8, antithetic=True)
    gain = paired_gain(pairs, (x,), {}, optimum, away, batch, {})
    assert gain.shape == (4, 100) and torch.allclose(gain, exact.expand(4, 100), atol=1e-9)  # no noise left
    assert not improves(pairs, (x,), {}, optimum, away, batch, {}).any()
    assert improves(pairs, (x,), {}, away, optimum, batch, {}).all()
    # Independent draws carry a move's first-order noise: a small harmful move passes for some datapoints.
    independent, nearby = InnerELBO(model, layout, num_particles=8), {"z": (loc + 0.003, scale)}
    assert not improves(pairs, (x,), {}, optimum, nearby, batch, {}).any()
    assert improves(independent, (x,), {}, optimum, nearby, batch, {}).any()
