"""Tests of the two-level model :class:`pyro_iterative.models.HierarchicalVAE`."""

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from pyro_iterative.models import HierarchicalVAE

DATA_DIM, D1, D2, HIDDEN = 12, 4, 3, (8,)


def _generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def binary_x():
    return torch.bernoulli(torch.full((10, DATA_DIM), 0.4), generator=_generator())


def _sample_sites(trace) -> list[str]:
    return [name for name, node in trace.nodes.items() if node["type"] == "sample"]


def test_hierarchical_trace_sites_order_and_shapes(binary_x):
    model = HierarchicalVAE(DATA_DIM, latent_dims=(D1, D2), hidden_sizes=HIDDEN)
    trace = poutine.trace(model).get_trace(binary_x)
    assert _sample_sites(trace) == ["data", "z2", "z1", "x"]
    assert trace.nodes["z2"]["value"].shape == (10, D2)
    assert trace.nodes["z1"]["value"].shape == (10, D1)
    for site, event in (("z2", (D2,)), ("z1", (D1,)), ("x", (DATA_DIM,))):
        assert trace.nodes[site]["fn"].event_shape == event
        assert [(f.name, f.dim, f.size) for f in trace.nodes[site]["cond_indep_stack"]] == [("data", -1, 10)]
    trace.compute_log_prob()
    assert all(trace.nodes[site]["log_prob"].shape == (10,) for site in ("z2", "z1", "x"))
    # p(z1 | z2) is the conditional Gaussian of the prior network, with a floored softplus scale.
    z2, z1 = trace.nodes["z2"]["value"], trace.nodes["z1"]["value"]
    loc, raw = model.prior_net(z2).chunk(2, dim=-1)
    expected = torch.distributions.Normal(loc, F.softplus(raw) + model.min_scale).log_prob(z1).sum(-1)
    assert torch.allclose(trace.nodes["z1"]["log_prob"], expected, atol=1e-5)
    bce = F.binary_cross_entropy_with_logits(model.decoder(z1), binary_x, reduction="none").sum(-1)
    assert torch.allclose(trace.nodes["x"]["log_prob"], -bce, atol=1e-5)
    assert model.conditional_prior(torch.full((2, D2), -50.0)).base_dist.scale.min() >= model.min_scale


def test_hierarchical_defaults_and_architecture():
    model = HierarchicalVAE()
    assert (model.data_dim, model.latent_dims, model.hidden_sizes) == (784, (64, 32), (512, 512))
    assert type(model.prior_net) is torch.nn.Sequential and type(model.decoder) is torch.nn.Sequential
    assert [m.out_features for m in model.prior_net if isinstance(m, torch.nn.Linear)] == [512, 512, 128]
    assert [m.out_features for m in model.decoder if isinstance(m, torch.nn.Linear)] == [512, 512, 784]
    assert any(isinstance(m, torch.nn.ELU) for m in model.prior_net)


def test_hierarchical_params_in_param_only_trace(binary_x):
    model = HierarchicalVAE(DATA_DIM, latent_dims=(D1, D2), hidden_sizes=HIDDEN)
    trace = poutine.trace(model, param_only=True).get_trace(binary_x)
    names = set(trace.nodes)
    expected = {f"prior_net$$${n}" for n, _ in model.prior_net.named_parameters()}
    expected |= {f"decoder$$${n}" for n, _ in model.decoder.named_parameters()}
    assert names == expected
    assert any(n.startswith("prior_net$$$") for n in names) and any(n.startswith("decoder$$$") for n in names)
    assert {id(node["value"]) for node in trace.nodes.values()} == {id(p) for p in model.parameters()}


def test_hierarchical_subsampling_and_particles(binary_x):
    model = HierarchicalVAE(DATA_DIM, latent_dims=(D1, D2), hidden_sizes=HIDDEN)
    trace = poutine.trace(model).get_trace(binary_x, subsample_size=4)
    assert trace.nodes["z1"]["value"].shape == (4, D1)
    assert trace.nodes["x"]["scale"] == pytest.approx(10 / 4)
    assert torch.equal(trace.nodes["x"]["value"], binary_x[trace.nodes["data"]["value"]])
    subsample = torch.tensor([9, 2])
    trace = poutine.trace(model).get_trace(binary_x, subsample=subsample)
    assert torch.equal(trace.nodes["x"]["value"], binary_x[subsample])
    with pyro.plate("particles", 7, dim=-2):
        trace = poutine.trace(model).get_trace(binary_x, subsample_size=5)
    assert trace.nodes["z2"]["value"].shape == (7, 5, D2)
    assert trace.nodes["z1"]["value"].shape == (7, 5, D1)
    trace.compute_log_prob()
    assert all(trace.nodes[site]["log_prob"].shape == (7, 5) for site in ("z2", "z1", "x"))


def test_hierarchical_reconstruct_and_validation(binary_x):
    model = HierarchicalVAE(DATA_DIM, latent_dims=(D1, D2), hidden_sizes=HIDDEN)
    probs = model.reconstruct(torch.randn(4, 2, D1))
    assert probs.shape == (4, 2, DATA_DIM) and ((probs > 0) & (probs < 1)).all()
    with pytest.raises(ValueError, match=f"latent_dims\\[0\\]={D1}"):
        model.reconstruct(torch.randn(3, D2))
    with pytest.raises(ValueError, match=f"data_dim={DATA_DIM}"):
        model(torch.rand(5, DATA_DIM + 1))
    bad = binary_x.clone()
    bad[3, 2] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\].*1\.5 in datapoint 3, column 2"):
        model(bad)
    with pytest.raises(ValueError, match="latent_dims"):
        HierarchicalVAE(latent_dims=(64,))
    with pytest.raises(ValueError, match="latent_dims\\[1\\]"):
        HierarchicalVAE(latent_dims=(64, 0))
    with pytest.raises(ValueError, match="min_scale"):
        HierarchicalVAE(min_scale=0.0)
