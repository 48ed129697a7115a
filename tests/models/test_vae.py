"""Tests of the VAE generative model :class:`pyro_iterative.models.VAE`."""

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import PyroModule

from pyro_iterative.models import VAE

DATA_DIM, LATENT_DIM, HIDDEN = 20, 3, (8, 6)


@pytest.fixture
def model():
    return VAE(data_dim=DATA_DIM, latent_dim=LATENT_DIM, hidden_sizes=HIDDEN)


@pytest.fixture
def x():
    return torch.rand(10, DATA_DIM, generator=torch.Generator().manual_seed(1))


def test_decoder_architecture(model):
    assert type(model.decoder) is torch.nn.Sequential and not isinstance(model.decoder, PyroModule)
    kinds = [type(layer) for layer in model.decoder]
    assert kinds == [torch.nn.Linear, torch.nn.ELU, torch.nn.Linear, torch.nn.ELU, torch.nn.Linear]
    linears = [layer for layer in model.decoder if isinstance(layer, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(3, 8), (8, 6), (6, 20)]
    default = VAE()
    assert (default.data_dim, default.latent_dim, default.hidden_sizes) == (784, 64, (512, 512))
    assert [m.out_features for m in default.decoder if isinstance(m, torch.nn.Linear)] == [512, 512, 784]
    linear = VAE(data_dim=5, latent_dim=2, hidden_sizes=())
    assert len(linear.decoder) == 1


def test_trace_sites_and_shapes(model, x):
    trace = poutine.trace(model).get_trace(x)
    z = trace.nodes["z"]["value"]
    assert z.shape == (10, LATENT_DIM) and z.dtype == x.dtype
    assert trace.nodes["x"]["is_observed"] and torch.equal(trace.nodes["x"]["value"], x)
    for site in ("z", "x"):
        assert [(f.name, f.dim, f.size) for f in trace.nodes[site]["cond_indep_stack"]] == [("data", -1, 10)]
        assert trace.nodes[site]["fn"].event_shape == ((LATENT_DIM,) if site == "z" else (DATA_DIM,))
    trace.compute_log_prob()
    assert trace.nodes["z"]["log_prob"].shape == (10,)
    assert trace.nodes["x"]["log_prob"].shape == (10,)
    sample_sites = [name for name, node in trace.nodes.items() if node["type"] == "sample"]
    assert sample_sites == ["data", "z", "x"]  # the plate's subsample site, then the two random variables


def test_grey_level_likelihood_is_bernoulli_cross_entropy(model, x):
    trace = poutine.trace(model).get_trace(x)
    trace.compute_log_prob()
    z = trace.nodes["z"]["value"]
    logits = model.decoder(z)
    expected = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    assert torch.isfinite(trace.nodes["x"]["log_prob"]).all()
    assert torch.allclose(trace.nodes["x"]["log_prob"], expected, atol=1e-5)
    prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(trace.nodes["z"]["log_prob"], prior, atol=1e-6)


def test_decoder_params_are_pyro_params(model, x):
    trace = poutine.trace(model, param_only=True).get_trace(x)
    values = {name: node["value"] for name, node in trace.nodes.items()}
    assert len(values) == 6
    # pyro.module names a plain submodule's params "<attribute>$$$<param name>"
    assert sorted(values) == sorted(f"decoder$$${name}" for name, _ in model.decoder.named_parameters())
    decoder_params = {id(p) for p in model.decoder.parameters()}
    assert {id(v) for v in values.values()} == decoder_params
    assert set(pyro.get_param_store().keys()) == set(values)


def test_svi_step_updates_decoder(model, x):
    def guide(x, subsample_size=None, subsample=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1):
            pyro.sample("z", dist.Normal(x.new_zeros(LATENT_DIM), x.new_ones(LATENT_DIM)).to_event(1))

    before = [p.detach().clone() for p in model.decoder.parameters()]
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    loss = svi.step(x, subsample_size=4)
    assert loss == loss  # not NaN
    after = list(model.decoder.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after))


def test_subsampling(model, x):
    trace = poutine.trace(model).get_trace(x, subsample_size=4)
    assert trace.nodes["z"]["value"].shape == (4, LATENT_DIM)
    assert trace.nodes["x"]["scale"] == pytest.approx(10 / 4)
    idx = trace.nodes["data"]["value"]
    assert torch.equal(trace.nodes["x"]["value"], x[idx])
    subsample = torch.tensor([9, 2])
    trace = poutine.trace(model).get_trace(x, subsample=subsample)
    assert torch.equal(trace.nodes["x"]["value"], x[subsample])


def test_outer_particle_plate(model, x):
    with pyro.plate("particles", 7, dim=-2):
        trace = poutine.trace(model).get_trace(x, subsample_size=5)
    assert trace.nodes["z"]["value"].shape == (7, 5, LATENT_DIM)
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].shape == (7, 5)


def test_float64_and_binary_data(model):
    model = model.double()
    x = torch.bernoulli(torch.full((6, DATA_DIM), 0.3, dtype=torch.float64))
    trace = poutine.trace(model).get_trace(x)
    assert trace.nodes["z"]["value"].dtype == torch.float64
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].dtype == torch.float64


def test_reconstruct(model):
    z = torch.randn(4, 2, LATENT_DIM)
    probs = model.reconstruct(z)
    assert probs.shape == (4, 2, DATA_DIM)
    assert ((probs > 0) & (probs < 1)).all()
    assert torch.allclose(probs, torch.sigmoid(model.decoder(z)))
    with pytest.raises(ValueError, match="latent_dim=3"):
        model.reconstruct(torch.randn(4, LATENT_DIM + 1))


def test_bad_data_dim_message(model):
    with pytest.raises(ValueError) as info:
        model(torch.rand(5, DATA_DIM + 1))
    message = str(info.value)
    assert f"data_dim={DATA_DIM}" in message and str(DATA_DIM + 1) in message
    with pytest.raises(ValueError, match="data_dim"):
        model(torch.rand(DATA_DIM))


def test_constructor_validation():
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(latent_dim=0)
    with pytest.raises(ValueError, match="hidden_sizes"):
        VAE(hidden_sizes=(10, 0))
