"""Reference generative models written as Pyro models (installed as ``pyro_iterative.models``)."""

from .linear_gaussian import LinearGaussian
from .vae import VAE

__all__ = ["LinearGaussian", "VAE"]
