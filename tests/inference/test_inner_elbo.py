"""InnerELBO against the closed-form ELBO of the linear-Gaussian model, with and without subsampling, on both paths."""

import pyro.poutine as poutine
import pytest
import torch

from pyro_iterative.inference import Batch, InnerELBO, can_draw_pairs
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


def test_antithetic_pairs_are_unbiased_and_make_the_location_gradient_exact_on_a_linear_gaussian_model(setting):
    model, x, layout, loc, scale = setting
    batch = Batch(torch.arange(40), 40)
    many = InnerELBO(model, layout, num_particles=2000, antithetic=True)
    estimates = torch.stack([many((x,), {}, {"z": (loc, scale)}, batch, {})[0] for _ in range(20)])
    assert_within_standard_errors(estimates, model.elbo(x, loc, scale))

    loc = loc.clone().requires_grad_()
    exact_loc = loc.detach().clone().requires_grad_()
    (exact,) = torch.autograd.grad(model.elbo(x, exact_loc, scale).sum(), exact_loc)
    for antithetic, vectorize in ((True, None), (True, False), (False, None)):  # False: one particle at a time
        pair = InnerELBO(model, layout, num_particles=2, antithetic=antithetic, vectorize=vectorize)
        grads = [torch.autograd.grad(pair((x,), {}, {"z": (loc, scale)}, batch, {})[0].sum(), loc)[0]
                 for _ in range(3)]
        if antithetic:  # log p is quadratic in z: the pair's noise cancels in the location gradient
            assert all(torch.allclose(grad, exact, atol=1e-9) for grad in grads)
        else:
            assert not torch.allclose(grads[0], grads[1], atol=1e-3)


def test_antithetic_pairs_mirror_in_unconstrained_space_and_need_an_even_number_on_the_fast_path():
    from pyro_iterative.models import PoissonGamma

    model = PoissonGamma(6, 2, weight_scale=5.0).double()
    x = model.sample(10, seed=0)
    layout = discover_sites(poutine.trace(model).get_trace(x))
    loc, scale = torch.full((10, 2), -0.5, dtype=torch.float64), torch.full((10, 2), 0.3, dtype=torch.float64)
    inner = InnerELBO(model, layout, num_particles=4, antithetic=True)
    _, trace = inner((x,), {}, {"z": (loc, scale)}, Batch(torch.arange(10), 10), {})
    z = trace.nodes["z"]["value"]  # (4, 10, 2), positive
    assert z.shape == (4, 10, 2) and (z > 0).all()
    assert torch.allclose(z[:2].log() + z[2:].log(), 2 * loc.expand(2, 10, 2))
    for bad in ({"num_particles": 3}, {"num_particles": 2, "fast": False}):
        assert not can_draw_pairs(layout, **bad)
        with pytest.raises(ValueError, match="antithetic particles come in pairs"):
            InnerELBO(model, layout, antithetic=True, **bad)
    assert can_draw_pairs(layout, 4)


def test_antithetic_pairs_one_particle_at_a_time_for_a_decoder_that_takes_only_batch_and_features():
    import pyro
    import pyro.distributions as dist

    norm = torch.nn.BatchNorm1d(3).double().eval()  # (batch, features) only; affine in eval mode

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(norm(z), 0.5).to_event(1), obs=x)

    x = torch.randn(8, 3, dtype=torch.float64)
    layout = discover_sites(poutine.trace(model).get_trace(x))
    inner = InnerELBO(model, layout, num_particles=4, antithetic=True)
    loc = torch.zeros(8, 3, dtype=torch.float64, requires_grad=True)
    scale = torch.full((8, 3), 0.5, dtype=torch.float64)
    grads = [torch.autograd.grad(inner((x,), {}, {"z": (loc, scale)}, Batch(torch.arange(8), 8), {})[0].sum(),
                                 loc)[0] for _ in range(2)]
    assert inner.vectorize is False  # the plate failed, the pairs were drawn one particle at a time
    assert torch.allclose(grads[0], grads[1], atol=1e-9)  # log p is quadratic in z: exact location gradients


def test_antithetic_halves_share_the_models_dropout_masks_and_pairs_do_not():
    import pyro
    import pyro.distributions as dist

    masks = []

    def model(x):  # a decoder with dropout that takes (batch, features) only
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
            if z.dim() != 2:
                raise ValueError("(batch, features) only")
            kept = torch.nn.functional.dropout(torch.ones_like(z), p=0.5, training=True)
            masks.append(kept != 0)
            pyro.sample("x", dist.Normal(kept * z, 0.5).to_event(1), obs=x)

    x = torch.randn(50, 3, dtype=torch.float64)
    layout = discover_sites(poutine.trace(model).get_trace(x))
    inner = InnerELBO(model, layout, num_particles=4, antithetic=True, vectorize=False)
    loc, scale = torch.zeros(50, 3, dtype=torch.float64), torch.full((50, 3), 0.5, dtype=torch.float64)
    masks.clear()
    inner((x,), {}, {"z": (loc, scale)}, Batch(torch.arange(50), 50), {})
    assert len(masks) == 4
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[2], masks[3])  # a draw and its mirror: one mask
    assert not torch.equal(masks[0], masks[2])  # the next pair draws afresh


@pytest.mark.parametrize("batch_size", [5, 6])
def test_a_batch_norm_decoder_that_misreads_a_particle_dimension_gets_one_particle_at_a_time(batch_size):
    import pyro
    import pyro.distributions as dist

    norm = torch.nn.BatchNorm1d(6).double()  # train mode: batch statistics over dim 0

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(6, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(norm(z), 0.5).to_event(1), obs=x)

    # with 6 datapoints BatchNorm1d(6) takes (particles, 6, 6) as (N, C, L) without an error: checked, not trusted
    x = torch.randn(batch_size, 6, dtype=torch.float64)
    layout = discover_sites(poutine.trace(model).get_trace(x))
    loc = torch.randn(batch_size, 6, dtype=torch.float64)
    scale = torch.full((batch_size, 6), 0.5, dtype=torch.float64)
    batch = Batch(torch.arange(batch_size), batch_size)
    inner = InnerELBO(model, layout, num_particles=3)
    pyro.set_rng_seed(0)
    state = torch.get_rng_state()
    inner((x,), {}, {"z": (loc, scale)}, batch, {})
    assert inner.vectorize is False
    one_at_a_time = InnerELBO(model, layout, num_particles=3, vectorize=False)
    torch.set_rng_state(state)  # the check draws nothing: the same particles as one at a time from the start
    expected = one_at_a_time((x,), {}, {"z": (loc, scale)}, batch, {})[0]
    torch.set_rng_state(state)
    assert torch.allclose(InnerELBO(model, layout, num_particles=3)((x,), {}, {"z": (loc, scale)}, batch, {})[0],
                          expected)


def test_a_model_that_vectorizes_keeps_its_particle_plate(setting):
    model, x, layout, loc, scale = setting
    inner = InnerELBO(model, layout, num_particles=4)
    _, trace = inner((x,), {}, {"z": (loc, scale)}, Batch(torch.arange(len(x)), len(x)), {})
    assert inner.vectorize is None and inner.particle_dim is not None
    assert trace.nodes["z"]["value"].shape[0] == 4
