"""Reference generative models written as Pyro models (installed as ``pyro_iterative.models``)."""

from .bag_of_words import BagOfWords, load_counts, perplexity, synthetic_corpus
from .gaussian_vae import GaussianVAE
from .hierarchical_vae import HierarchicalVAE
from .linear_gaussian import LinearGaussian
from .vae import VAE

__all__ = [
    "BagOfWords",
    "GaussianVAE",
    "HierarchicalVAE",
    "LinearGaussian",
    "VAE",
    "load_counts",
    "perplexity",
    "synthetic_corpus",
]
