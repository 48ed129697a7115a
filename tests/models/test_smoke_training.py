"""HierarchicalVAE, GaussianVAE and BagOfWords, each trained briefly with IterativeGuide on tiny data: training
runs, the guide finds the local sites, ELBO trajectories and perplexity are finite (with either encoding)."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import IterativeGuide
from pyro_iterative.models import BagOfWords, GaussianVAE, HierarchicalVAE, perplexity, synthetic_corpus

DATA_DIM, D1, D2 = 12, 4, 3
VOCAB = 15


def _generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- smoke training with IterativeGuide


@pytest.mark.parametrize("name", ["hierarchical", "gaussian", "bag_of_words"])
def test_iterative_guide_smoke_training(name):
    generator = _generator(7)
    if name == "hierarchical":
        model = HierarchicalVAE(DATA_DIM, latent_dims=(D1, D2), hidden_sizes=(16,))
        data = torch.bernoulli(torch.full((24, DATA_DIM), 0.3), generator=generator)
    elif name == "gaussian":
        model = GaussianVAE(DATA_DIM, latent_dim=D1, hidden_sizes=(16,))
        data = torch.randn(24, DATA_DIM, generator=generator)
    else:
        model = BagOfWords(VOCAB, latent_dim=D1, hidden_sizes=(16,))
        data = synthetic_corpus(24, vocab_size=VOCAB, mean_length=15, seed=1)
    guide = IterativeGuide(model, num_iterations=2, hidden_sizes=(32,))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(data, subsample_size=12) for _ in range(30)]
    assert all(math.isfinite(loss) for loss in losses)
    expected_sites = ["z2", "z1"] if name == "hierarchical" else ["z"]
    assert [site.name for site in guide.layout.local_sites] == expected_sites
    trajectory = guide.elbo_trajectory(data)
    assert trajectory.shape == (3, 24) and torch.isfinite(trajectory).all()
    if name == "bag_of_words":
        assert perplexity(trajectory[-1], data, exclude_coefficient=True) > 1
    # The prediction-errors encoding reads the likelihood's mean and the priors' means and scales.
    errors_guide = IterativeGuide(model, num_iterations=1, hidden_sizes=(8,), encode=("gradient", "errors"))
    assert errors_guide.elbo_trajectory(data[:5]).shape == (2, 5)
