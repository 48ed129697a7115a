"""Fixtures shared by the guide tests."""

import pytest
import torch

from pyro_iterative.models import LinearGaussian


@pytest.fixture
def linear_gaussian():
    """A float64 linear-Gaussian model (exact posterior known), 600 training and 300 test datapoints."""
    model = LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5, seed=0, dtype=torch.float64)
    return model, model.sample(600, seed=1), model.sample(300, seed=2)
