"""The comparison's building blocks: methods trained in one process stay independent."""

import pytest
import torch

from pyro_iterative.experiments.comparison import measure_method, train_method
from pyro_iterative.experiments.config import RunConfig
from pyro_iterative.experiments.datasets import evaluation_data
from pyro_iterative.experiments.engine import TestELBO
from pyro_iterative.experiments.registry import MODELS

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
