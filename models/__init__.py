"""Reference generative models written as Pyro models (installed as ``pyro_iterative.models``).

The corpus helpers :func:`load_counts` and :func:`synthetic_corpus` live in :mod:`pyro_iterative.data` and are
re-exported here next to :class:`BagOfWords`.
"""

from pyro_iterative.data import load_counts, synthetic_corpus

from .bag_of_words import BagOfWords, perplexity
from .dmm import DMM
from .factor_analysis import FactorAnalysis
from .gaussian_vae import GaussianVAE
from .hierarchical_vae import HierarchicalVAE
from .linear_gaussian import LinearGaussian, synthetic_linear_gaussian
from .mixed_vae import MixedVAE
from .mixture_vae import MixturePriorVAE
from .poisson_gamma import PoissonGamma
from .prod_lda import ProdLDA
from .semi_supervised_vae import SemiSupervisedVAE, with_labels
from .vae import VAE

__all__ = [
    "BagOfWords",
    "DMM",
    "FactorAnalysis",
    "GaussianVAE",
    "HierarchicalVAE",
    "LinearGaussian",
    "MixedVAE",
    "MixturePriorVAE",
    "PoissonGamma",
    "ProdLDA",
    "SemiSupervisedVAE",
    "VAE",
    "load_counts",
    "perplexity",
    "synthetic_corpus",
    "synthetic_linear_gaussian",
    "with_labels",
]
