"""Evaluation against closed forms on the linear-Gaussian model: log-likelihood, amortization gap."""

import warnings

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import AmortizedGuide, IterativeGuide, LocalGuide, ModelPasses
from pyro_iterative.evaluation import amortization_gap, elbo_per_iteration, gap_failed, log_likelihood, over_batches
from pyro_iterative.guides import Refinement
from pyro_iterative.models import LinearGaussian


class ExactPosteriorGuide(LocalGuide):
    """q = the exact (diagonal) posterior of an orthogonal LinearGaussian, its mean moved by ``shift``."""

    def __init__(self, model, shift=0.0):
        super().__init__(model)
        self.shift = shift

    def _setup_networks(self, layout):
        self.unused = torch.nn.Linear(1, 1)

    def _refine(self, args, kwargs, batch, global_values, *, num_iterations=None, record=False):
        q = self.model.posterior_diagonal(args[0][batch.indices])
        return Refinement(lam={"z": torch.cat([q.mean + self.shift, q.stddev.log()], dim=-1)})

    def inference_cost(self, num_iterations=None):
        return ModelPasses(0, 0)


@pytest.fixture
def model_and_data():
    model = LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5, seed=0)
    return model, model.sample(400, seed=1), model.sample(60, seed=2)


def test_log_likelihood_matches_the_exact_value(model_and_data):
    model, x_train, x_test = model_and_data
    guide = AmortizedGuide(model, hidden_sizes=(32, 32))  # a proposal that is good, not exact
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    for _ in range(150):
        svi.step(x_train, subsample_size=100)
    elbo = guide.elbo_trajectory(x_test)[-1]
    estimate = log_likelihood(model, guide, x_test, num_samples=5000, chunk_size=1000)
    exact = model.log_likelihood(x_test)
    assert (exact - elbo).mean() > 0.1  # the ELBO alone is measurably below log p(x)
    assert (estimate.values - exact).abs().mean() < 0.05, (estimate.values - exact).abs().mean()
    assert estimate.passes == ModelPasses(forward=1 + 5000, backward=0)  # reading the data, then the samples


def test_log_likelihood_chunks_do_not_change_the_estimate(model_and_data):
    model, _, x_test = model_and_data
    guide = ExactPosteriorGuide(model, shift=0.05)  # weights vary a little: a chunking error would cost log(#chunks)
    pyro.set_rng_seed(1)
    a = log_likelihood(model, guide, x_test[:5], num_samples=600, chunk_size=600)
    pyro.set_rng_seed(1)
    b = log_likelihood(model, guide, x_test[:5], num_samples=600, chunk_size=7)
    exact = model.log_likelihood(x_test[:5])
    assert torch.allclose(a.values, exact, atol=0.05) and torch.allclose(b.values, exact, atol=0.05)
    with pytest.raises(ValueError, match="num_samples"):
        log_likelihood(model, guide, x_test, num_samples=0)


def test_amortization_gap_is_zero_at_the_optimum(model_and_data):
    model, _, x_test = model_and_data
    result = amortization_gap(model, ExactPosteriorGuide(model), x_test, lr=1e-3, patience=50, eval_particles=2000)
    assert result.gap.mean.abs() < 0.02, result.gap.mean
    assert torch.allclose(result.guide_elbo.values, model.log_likelihood(x_test), atol=1e-6)  # zero-variance q


def test_amortization_gap_of_a_shifted_posterior_is_the_closed_form_kl(model_and_data):
    model, _, x_test = model_and_data
    shift = 0.4
    result = amortization_gap(model, ExactPosteriorGuide(model, shift=shift), x_test, lr=0.02, eval_particles=2000)
    scale = model.posterior_diagonal(x_test).stddev
    expected = 0.5 * (shift**2 / scale**2).sum(-1)  # KL between Normals that differ only in their means
    assert (result.gap.mean - expected.mean()).abs() < 0.05 + 4 * result.gap.standard_error
    assert result.optimized_elbo.passes.backward > 0


def test_a_local_optimizer_that_makes_q_worse_is_reported_as_failed_not_as_a_gap(model_and_data):
    model, _, x_test = model_and_data
    with warnings.catch_warnings():  # a good optimizer: a gap, no warning
        warnings.simplefilter("error", RuntimeWarning)
        good = amortization_gap(model, ExactPosteriorGuide(model, shift=0.4), x_test, lr=0.02, eval_particles=200)
        at_optimum = amortization_gap(model, ExactPosteriorGuide(model), x_test, lr=1e-3, patience=50)
    assert not good.failed and good.gap.mean > 0.1
    assert not at_optimum.failed  # a few hundredths lost at the optimum are not a failure
    with pytest.warns(RuntimeWarning, match=r"made q worse .* not an amortization gap; .* smaller lr"):
        bad = amortization_gap(model, ExactPosteriorGuide(model), x_test, optimizer="sgd", lr=1.0, max_steps=20,
                               patience=5)
    assert bad.failed and bad.gap.mean < -0.1
    assert gap_failed(-28.5, 1.9) and not gap_failed(-0.1, 0.2) and not gap_failed(-0.02, 0.001)


def test_fraction_closed_per_iteration_of_an_iterative_guide(model_and_data):
    model, x_train, x_test = model_and_data
    guide = IterativeGuide(model, num_iterations=3, hidden_sizes=(32, 32))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    for _ in range(100):
        svi.step(x_train, subsample_size=100)
    result = amortization_gap(model, guide, x_test, lr=0.02)
    assert result.trajectory.shape == (4, 60)
    fractions = result.fraction_closed
    assert fractions.shape == (3,)
    assert 0.5 < fractions.sum() <= 1.05  # most of the way from the prior to the local optimum
    assert fractions[0] > 0.5  # the first update does most of the work


def test_elbo_per_iteration_and_over_batches(model_and_data):
    model, _, x_test = model_and_data
    guide = ExactPosteriorGuide(model)
    whole = elbo_per_iteration(guide, x_test)
    joined = over_batches(lambda x: elbo_per_iteration(guide, x), x_test, batch_size=7)
    assert whole.values.shape == joined.values.shape == (1, 60)
    assert torch.allclose(whole.values, joined.values, atol=1e-9)  # the exact posterior: no noise in the ELBO
    summary = joined.summary()
    assert summary["num_datapoints"] == 60 and summary["model_passes_per_datapoint"] == {"forward": 1, "backward": 0}
    with pytest.raises(ValueError, match="batch_size"):
        over_batches(lambda x: elbo_per_iteration(guide, x), x_test, batch_size=0)
