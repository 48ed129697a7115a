"""Every guide satisfies the guide protocol, and LocalGuide.refine is the public view of a guide's refinement."""

import pyro
import pytest
import torch

from pyro_iterative import (
    AmortizedGuide,
    IterativeGuide,
    OptimizingGuide,
    PerDatapointGuide,
    SemiAmortizedGuide,
    TrainableGuide,
    inference_parameters,
)
from pyro_iterative.models import LinearGaussian

GUIDES = {
    "iterative": lambda model: IterativeGuide(model, num_iterations=3, hidden_sizes=(8,)),
    "amortized": lambda model: AmortizedGuide(model, hidden_sizes=(8,)),
    "semi_amortized": lambda model: SemiAmortizedGuide(model, num_steps=2, lr=0.03, hidden_sizes=(8,)),
    "optimizing": lambda model: OptimizingGuide(model, num_steps=3, lr=0.05),
    "per_datapoint": lambda model: PerDatapointGuide(model),
}


@pytest.fixture
def model_and_data():
    model = LinearGaussian.orthogonal(data_dim=4, latent_dim=2, noise_scale=0.5, seed=0)
    return model, model.sample(12, seed=1)


@pytest.mark.parametrize("name", list(GUIDES))
def test_every_guide_satisfies_the_protocol_and_reports_its_cost(name, model_and_data):
    model, x = model_and_data
    guide = GUIDES[name](model)
    assert isinstance(guide, TrainableGuide)
    assert guide.setup(x, subsample_size=4) is guide and guide.layout is not None
    assert guide.nonfinite_gradients == 0
    trajectory = guide.elbo_trajectory(x)
    assert trajectory.shape[-1] == 12 and torch.isfinite(trajectory).all()
    assert guide.inference_cost().total >= 0
    expected = {"per_datapoint": 2 * 12 * 2, "optimizing": 0}.get(name)
    count = inference_parameters(guide)
    assert count == guide.count_inference_parameters()
    if expected is not None:
        assert count == expected  # stored q: a location and a scale per coordinate and datapoint; no network
    else:
        assert count == sum(p.numel() for p in guide.parameters()) > 0


def test_a_plain_module_is_not_a_trainable_guide():
    assert not isinstance(torch.nn.Linear(2, 2), TrainableGuide)


def test_global_sites_do_not_count_as_inference_parameters():
    def model(x):
        shift = pyro.sample("shift", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
            pyro.sample("x", pyro.distributions.Normal(z + shift, 1.0), obs=x)

    guide = AmortizedGuide(model, hidden_sizes=(5,)).setup(torch.randn(6))
    encoder = sum(p.numel() for p in guide.encoder.parameters())
    assert guide.count_inference_parameters() == encoder < sum(p.numel() for p in guide.parameters())


def test_refine_returns_every_lambda_visited_and_the_final_q(model_and_data):
    model, x = model_and_data
    guide = IterativeGuide(model, num_iterations=3, hidden_sizes=(8,)).setup(x)
    torch.manual_seed(0)
    inference = guide.refine(x, record=True)
    assert len(inference.lams) == 4 and len(inference.refinement.elbos) == 3
    assert torch.equal(inference.lams[-1]["z"], inference.lam["z"])
    assert inference.lams[0]["z"].abs().sum() == 0  # lambda_0: location 0, log-scale 0
    assert not inference.lam["z"].requires_grad and len(inference.batch) == 12
    loc, scale = inference.params()["z"]
    assert torch.equal(loc, inference.lam["z"][:, :2]) and torch.allclose(scale, inference.lam["z"][:, 2:].exp())
    assert torch.equal(inference.posterior()["z"].mean, loc)
    assert len(guide.refine(x).lams) == 1  # without record, only the final lambda
    torch.manual_seed(0)
    trajectory = guide.elbo_trajectory(x)
    assert torch.equal(trajectory[:-1], torch.stack(inference.refinement.elbos))  # the same draws, the same ELBOs
