"""Tests of the continuous-data model :class:`pyro_iterative.models.GaussianVAE`."""

import pyro
import pytest
import torch
from pyro import poutine

from pyro_iterative.models import GaussianVAE

DATA_DIM, D1, HIDDEN = 12, 4, (8,)


def _generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def real_x():
    return torch.randn(10, DATA_DIM, generator=_generator())


def _sample_sites(trace) -> list[str]:
    return [name for name, node in trace.nodes.items() if node["type"] == "sample"]


def test_gaussian_trace_and_log_likelihood(real_x):
    model = GaussianVAE(DATA_DIM, latent_dim=D1, hidden_sizes=HIDDEN, init_scale=0.7)
    with torch.no_grad():
        model.log_scale.copy_(torch.linspace(-2.0, 1.0, DATA_DIM))
    trace = poutine.trace(model).get_trace(real_x)
    assert _sample_sites(trace) == ["data", "z", "x"]
    z = trace.nodes["z"]["value"]
    assert z.shape == (10, D1) and trace.nodes["x"]["fn"].event_shape == (DATA_DIM,)
    trace.compute_log_prob()
    scale = model.min_scale + torch.linspace(-2.0, 1.0, DATA_DIM).exp()
    expected = torch.distributions.Normal(model.decoder(z), scale).log_prob(real_x).sum(-1)
    assert torch.allclose(trace.nodes["x"]["log_prob"], expected, atol=1e-5)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(trace.nodes["z"]["log_prob"], prior, atol=1e-6)
    assert torch.allclose(model.output_scale, scale)
    assert torch.allclose(model.reconstruct(z), model.decoder(z))
    assert torch.allclose(GaussianVAE(3, init_scale=0.7).output_scale, torch.full((3,), 0.7))


def test_gaussian_params_subsampling_particles_and_float64(real_x):
    model = GaussianVAE(DATA_DIM, latent_dim=D1, hidden_sizes=HIDDEN)
    params = poutine.trace(model, param_only=True).get_trace(real_x).nodes
    assert "log_scale" in params and params["log_scale"]["value"] is model.log_scale
    assert {f"decoder$$${n}" for n, _ in model.decoder.named_parameters()} <= set(params)
    trace = poutine.trace(model).get_trace(real_x, subsample_size=4)
    assert trace.nodes["z"]["value"].shape == (4, D1) and trace.nodes["x"]["scale"] == pytest.approx(2.5)
    with pyro.plate("particles", 3, dim=-2):
        trace = poutine.trace(model).get_trace(real_x, subsample=torch.tensor([0, 4, 7]))
    assert trace.nodes["z"]["value"].shape == (3, 3, D1)
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].shape == (3, 3)
    model = model.double()
    trace = poutine.trace(model).get_trace(real_x.double())
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].dtype == torch.float64


def test_gaussian_validation(real_x):
    model = GaussianVAE(DATA_DIM, latent_dim=D1, hidden_sizes=HIDDEN)
    with pytest.raises(ValueError, match=f"data_dim={DATA_DIM}"):
        model(real_x[:, :-1])
    with pytest.raises(ValueError, match="floating point"):
        model(torch.ones(4, DATA_DIM, dtype=torch.int64))
    bad = real_x.clone()
    bad[6, 1] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite values.*datapoint 6, column 1"):
        model(bad)
    with pytest.raises(ValueError, match="latent_dim=3"):
        GaussianVAE(DATA_DIM, latent_dim=3).reconstruct(torch.randn(2, 4))
    with pytest.raises(ValueError, match="init_scale"):
        GaussianVAE(4, init_scale=1e-4)
    with pytest.raises(ValueError, match="hidden_sizes"):
        GaussianVAE(4, hidden_sizes=(0,))
