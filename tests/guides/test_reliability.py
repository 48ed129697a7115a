"""Bad input gets a clear error before any work is wasted; numerical faults stay with their datapoints."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import AmortizedGuide, IterativeGuide, SemiAmortizedGuide
from pyro_iterative.inference import LOG_SCALE_RANGE, local_params
from pyro_iterative.models import LinearGaussian


@pytest.fixture
def model():
    return LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5, seed=0)


def guides(model):
    return [
        IterativeGuide(model, num_iterations=3, hidden_sizes=(16,)),
        AmortizedGuide(model, hidden_sizes=(16,)),
        SemiAmortizedGuide(model, num_steps=2, lr=0.01, hidden_sizes=(16,)),
    ]


@pytest.mark.parametrize("index", range(3))
def test_nan_in_the_data_is_named_with_its_datapoints(model, index):
    x = model.sample(20, seed=1)
    x[7, 3] = float("nan")
    x[9] = float("inf")
    guide = guides(model)[index]
    with pytest.raises(ValueError, match=r"'x' holds 11 NaN or infinite values in 2 of the 20 datapoints.*position 7"):
        guide(x)


def test_uint8_images_are_refused_with_the_conversion(model):
    x = (model.sample(8, seed=1).abs() * 20).to(torch.uint8)
    with pytest.raises(ValueError, match=r"uint8.*x.float\(\) / 255"):
        IterativeGuide(model, hidden_sizes=(8,))(x)


def test_observe_returning_bad_values_is_refused(model):
    x = model.sample(8, seed=1)
    guide = AmortizedGuide(model, hidden_sizes=(8,), observe=lambda idx, x, **kw: torch.full_like(x[idx], float("nan")))
    with pytest.raises(ValueError, match="observe\\(\\) returned .*NaN"):
        guide(x)


def test_data_of_another_shape_is_refused(model):
    guide = IterativeGuide(model, num_iterations=2, hidden_sizes=(8,))
    guide(model.sample(8, seed=1))
    wider = LinearGaussian.orthogonal(data_dim=12, latent_dim=2, seed=0)
    guide._model = (wider,)  # the same guide, now pointed at a model that observes 12 values per datapoint
    guide._inner_elbo.model = wider
    with pytest.raises(ValueError, match="now give 12 values per datapoint.*built for 10.*new guide"):
        guide(wider.sample(8, seed=1))


def test_empty_batch_is_refused(model):
    guide = IterativeGuide(model, hidden_sizes=(8,))
    guide(model.sample(4, seed=1))
    with pytest.raises(ValueError, match="The batch is empty"):
        guide(model.sample(4, seed=1), subsample=torch.tensor([], dtype=torch.long))


@pytest.mark.parametrize("index", [0, 2])
def test_a_non_finite_gradient_stays_with_its_datapoint(model, index):
    x = model.sample(3, seed=1)
    poisoned = x.clone()
    poisoned[2, 0] = 1e308  # finite data, but its likelihood and gradient overflow
    guide = guides(model)[index]
    guide.setup(x)
    pyro.set_rng_seed(4)
    clean = guide.elbo_trajectory(x)
    pyro.set_rng_seed(4)
    faulty = guide.elbo_trajectory(poisoned)
    steps = clean.shape[0] - 1
    assert guide.nonfinite_gradients == steps  # one datapoint, every iteration
    assert torch.equal(faulty[:, :2], clean[:, :2])  # its batch-mates are untouched
    pyro.set_rng_seed(4)
    q = guide.get_posterior(poisoned)["z"]
    assert torch.isfinite(q.mean).all() and torch.isfinite(q.stddev).all()
    if index == 0:  # the iterative guide starts at lambda_0 and keeps it for that datapoint
        assert torch.equal(q.mean[2], torch.zeros(2))


def test_training_continues_when_one_datapoint_has_a_non_finite_gradient(model):
    guide = IterativeGuide(model, num_iterations=2, hidden_sizes=(8,))
    x = model.sample(30, seed=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(x)
    assert guide.nonfinite_gradients == 0


def test_log_scales_are_clamped_to_the_documented_range(model):
    guide = IterativeGuide(model, hidden_sizes=(8,)).setup(model.sample(2, seed=1))
    lam = torch.tensor([[0.0, 0.0, 100.0, -100.0]])
    _, scale = local_params(guide.layout, {"z": lam})["z"]
    assert torch.allclose(scale, torch.tensor([LOG_SCALE_RANGE[1], LOG_SCALE_RANGE[0]]).exp())
