"""The prediction-errors encoding: closed-form residuals on the linear-Gaussian model, and end to end."""

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import IterativeGuide
from pyro_iterative.inference import Batch, InnerELBO
from pyro_iterative.inference.encodings import prediction_errors
from pyro_iterative.inference.sites import discover_sites
from pyro_iterative.models import LinearGaussian


def test_errors_on_the_linear_gaussian_model_are_the_closed_form_residuals():
    model = LinearGaussian.orthogonal(data_dim=5, latent_dim=3, noise_scale=0.7, seed=2)
    x = model.sample(8, seed=3)
    layout = discover_sites(poutine.trace(model).get_trace(x))
    loc, scale = torch.randn(8, 3, dtype=torch.float64), torch.rand(8, 3, dtype=torch.float64) + 0.1
    _, trace = InnerELBO(model, layout).trace((x,), {}, {"z": (loc, scale)}, Batch(torch.arange(8), 8), {})
    z = trace.nodes["z"]["value"]
    errors = prediction_errors(trace, layout)
    expected = torch.cat([x - (z @ model.weight.T + model.bias), z], dim=-1)  # prior N(0, 1): (z - 0) / 1
    assert torch.allclose(errors, expected)


def test_errors_average_over_inner_particles():
    model = LinearGaussian.orthogonal(data_dim=5, latent_dim=3, seed=2)
    x = model.sample(4, seed=3)
    layout = discover_sites(poutine.trace(model).get_trace(x))
    inner = InnerELBO(model, layout, num_particles=7)
    params = {"z": (torch.zeros(4, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64))}
    _, trace = inner.trace((x,), {}, params, Batch(torch.arange(4), 4), {})
    z = trace.nodes["z"]["value"]  # (7, 4, 3)
    errors = prediction_errors(trace, layout, inner.particle_dim)
    assert errors.shape == (4, 8)
    assert torch.allclose(errors[:, 5:], z.mean(0))


def test_guide_with_errors_encoding_trains_and_improves_over_iterations():
    model = LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5, seed=0)
    x_train, x_test = model.sample(400, seed=1), model.sample(100, seed=2)
    guide = IterativeGuide(model, num_iterations=3, hidden_sizes=(32, 32), encode=("gradient", "errors"))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    for _ in range(150):
        svi.step(x_train, subsample_size=100)
    means = guide.elbo_trajectory(x_test).mean(1)
    assert means[-1] > means[0] + 10 and torch.isfinite(means).all()
    assert model.log_likelihood(x_test).mean() - means[-1] < 1.5
