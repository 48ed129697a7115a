"""The comparison's building blocks: methods trained in one process stay independent; every method's entry holds the
per-datapoint values behind its means and, for image models, its reconstructions."""

import pyro
import pytest
import torch

from pyro_iterative.evaluation import reconstruction
from pyro_iterative.experiments.comparison import measure_method, measure_run, train_method
from pyro_iterative.experiments.config import RunConfig
from pyro_iterative.experiments.datasets import evaluation_data
from pyro_iterative.experiments.engine import TestELBO
from pyro_iterative.experiments.registry import METHODS, MODELS

pytest.importorskip("mlxtend")


def test_every_method_trains_its_own_decoder_in_one_process(tmp_path):
    """Every method's VAE has the same Pyro parameter names; in one shared param store, SVI would step the
    first method's decoder while training the second, whose own decoder would never move."""
    config = RunConfig.quick(epochs=1, train_size=128, eval_datapoints=40, latent_dim=4, hidden=32, iterations=2,
                             methods=("standard", "iterative"), ll_datapoints=4, gap_datapoints=8, is_samples=20)
    x_train, x_eval = evaluation_data(config)
    torch.manual_seed(config.seed)
    initial = [p.detach().clone() for p in MODELS["vae"].build(784, 4, 32).parameters()]
    standard_model, standard_guide, history = train_method(config, "standard", x_train, x_eval, tmp_path, quiet=True)
    trained_standard = [p.detach().clone() for p in standard_model.parameters()]
    torch.manual_seed(3)
    before = TestELBO(standard_guide, standard_model, x_eval, seed=3)()
    iterative_model, _, _ = train_method(config, "iterative", x_train, x_eval, tmp_path, quiet=True)
    for model in (standard_model, iterative_model):
        assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), initial))  # every decoder trained
    assert all(torch.equal(p, q) for p, q in zip(standard_model.parameters(), trained_standard))  # and left alone
    torch.manual_seed(3)
    assert TestELBO(standard_guide, standard_model, x_eval, seed=3)() == before
    entry = measure_method(config, "standard", standard_model, standard_guide, history, x_eval)
    assert all(torch.equal(p, q) for p, q in zip(standard_model.parameters(), trained_standard))
    assert entry["test_elbo"] > -600


def _tiny(method):
    return RunConfig.quick(epochs=1, train_size=128, eval_datapoints=40, latent_dim=4, hidden=32, iterations=2,
                           methods=(method,), ll_datapoints=4, gap_datapoints=8, is_samples=20, gap_steps=20,
                           local_steps=5)


@pytest.mark.parametrize("method", ["iterative", "per_datapoint"])
def test_measure_method_stores_per_datapoint_values_and_reconstructions(tmp_path, method):
    config = _tiny(method)
    x_train, x_eval = evaluation_data(config)
    model, guide, history = train_method(config, method, x_train, x_eval, tmp_path, quiet=True)
    entry = measure_method(config, method, model, guide, history, x_eval)
    for key, count in [("test_elbo", 40), ("log_likelihood", 4), ("amortization_gap", 8)]:
        values = entry[key + "_values"]
        assert len(values) == count and all(isinstance(value, float) for value in values)
        assert sum(values) / count == pytest.approx(entry[key], rel=1e-5, abs=1e-5)
    shown = entry["reconstructions"]
    assert shown["index"] == list(range(8))
    assert len(shown["images"]) == 8 and all(len(image) == 784 for image in shown["images"])
    assert shown["elbo"] == entry["test_elbo_values"][:8]
    # The images are those of the q whose ELBO was scored: refined again under the ELBO's seed by a test-time guide
    # as the ELBO pass started with it (per_datapoint's is set up, drawing random numbers, on first use).
    evaluator = METHODS[method].test_time(model, guide, config)
    pyro.set_rng_seed(config.seed + 2)
    inference = evaluator.refine(x_eval, record=True)
    replayed = torch.stack(inference.refinement.elbos).mean(-1).tolist()
    assert replayed == pytest.approx(entry["elbo_per_iteration"][:-1], rel=1e-6)
    assert torch.allclose(reconstruction(model, inference, x_eval)[:8], torch.tensor(shown["images"]), atol=1e-6)


def test_measure_run_stores_the_reconstructed_datapoints_once(tmp_path):
    config = _tiny("standard")
    x_train, x_eval = evaluation_data(config)
    trained = {"standard": train_method(config, "standard", x_train, x_eval, tmp_path, quiet=True)}
    metrics = measure_run(config, trained, x_train, x_eval, command="test", quiet=True, log=lambda line: None)
    assert metrics["reconstructed_datapoints"] == {"index": list(range(8)), "data": x_eval[:8].tolist()}
    assert metrics["methods"]["standard"]["reconstructions"]["index"] == list(range(8))
    assert "figures" not in metrics  # the iterative method, whose guide the figures show, was not trained
