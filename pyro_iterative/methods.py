"""The methods a comparison trains, built at matched size, and the models they can be run on.

:func:`build_guide` builds each method's guide so that methods in one table are comparable: the same
decoder architecture, one latent sample per ELBO, and inference networks within 5% in parameter
count (the encoders are sized to the iterative guide's update networks). :func:`test_time_guide`
gives the guide that does inference on new data (the per-datapoint method optimizes q there).
Training and measuring live in :mod:`pyro_iterative.training` and :mod:`pyro_iterative.comparison`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .fairness import inference_parameters, matched_amortized_guide
from .iterative_guide import IterativeGuide
from .local_guide import LocalGuide
from .local_optimization import OptimizingGuide
from .per_datapoint_guide import PerDatapointGuide
from .semi_amortized_guide import SemiAmortizedGuide

__all__ = [
    "DEFAULT_BINARIZATION",
    "METHODS",
    "MODELS",
    "build_guide",
    "build_model",
    "method_label",
    "observe_rows",
    "stored_parameters",
    "test_time_guide",
]

METHODS = ("standard", "iterative", "semi_amortized", "per_datapoint")
MODELS = ("vae", "hierarchical", "gaussian", "bow")
#: the binarization each model's data get unless --binarize says otherwise
DEFAULT_BINARIZATION = {"vae": "dynamic", "hierarchical": "dynamic", "gaussian": "none", "bow": "none"}


def method_label(name: str, iterations: int, local_steps: int) -> str:
    """Human-readable name of a method, for tables and legends."""
    return {
        "standard": "Standard encoder",
        "iterative": f"Iterative (K={iterations})",
        "semi_amortized": f"Semi-amortized (K={iterations})",
        "per_datapoint": f"Per-datapoint (Adam, {local_steps} steps at test)",
    }[name]


def observe_rows(indices: torch.Tensor, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``observe=`` for the bundled models, which are called as ``model(x, subsample_size=...)``."""
    return x[indices].reshape(len(indices), -1)


def build_model(name: str, data_dim: int, *, latent_dim: int = 64, hidden: int = 512) -> torch.nn.Module:
    """A bundled model by name.

    ``"vae"``: the paper's single-level MNIST VAE; ``"hierarchical"``: its two-level VAE (latent sizes
    ``latent_dim`` and ``latent_dim // 2``, top-down prior); ``"gaussian"``: a VAE with a Gaussian likelihood for
    continuous data; ``"bow"``: a multinomial bag-of-words model of word counts.

    Usage::

        model = build_model("hierarchical", 784, latent_dim=64, hidden=512)
    """
    from . import models

    if name == "vae":
        return models.VAE(data_dim=data_dim, latent_dim=latent_dim, hidden_sizes=(hidden, hidden))
    if name == "hierarchical":
        return models.HierarchicalVAE(
            data_dim=data_dim, latent_dims=(latent_dim, max(1, latent_dim // 2)), hidden_sizes=(hidden, hidden)
        )
    if name == "gaussian":
        return models.GaussianVAE(data_dim=data_dim, latent_dim=latent_dim, hidden_sizes=(hidden, hidden))
    if name == "bow":
        return models.BagOfWords(vocab_size=data_dim, latent_dim=latent_dim, hidden_sizes=(hidden,))
    raise ValueError(f"Unknown model '{name}'; choose one of {MODELS}.")


def build_guide(
    method: str,
    model: Callable,
    x: torch.Tensor,
    *,
    iterations: int = 5,
    hidden: int = 512,
    batch_size: int = 64,
    encode: tuple[str, ...] = ("gradient", "data"),
) -> torch.nn.Module:
    """The training-time guide of ``method`` for ``model(x, subsample_size=batch_size)``, at matched size.

    Usage::

        guide = build_guide("standard", model, x_train, iterations=5, hidden=512)

    The iterative guide (inputs ``encode``) has two hidden layers of ``hidden`` units per local site; the standard and
    semi-amortized encoders get two layers of the width that matches its parameter count within 5%.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method '{method}'; choose from {', '.join(METHODS)}.")
    probe = {"subsample_size": min(batch_size, len(x))}
    if method == "per_datapoint":
        return PerDatapointGuide(model)
    iterative = IterativeGuide(model, num_iterations=iterations, hidden_sizes=(hidden, hidden), encode=encode)
    if method == "iterative":
        return iterative.setup(x, **probe)
    encoder = matched_amortized_guide(model, iterative, x, guide_options={"observe": observe_rows}, **probe)
    if method == "standard":
        return encoder
    # Step size 0.03, not SA-VAE's 1: on the MNIST VAE (3 epochs, 300 test digits, 5 steps from a trained encoder)
    # lr 1 lowered the ELBO from -198.0 to -310.2 and 0.3 to -208.6, while 0.1, 0.03, 0.01 and 0.003 raised it
    # (0.03 the most, to -196.4).
    return SemiAmortizedGuide(
        model, num_steps=iterations, lr=0.03, hidden_sizes=encoder.hidden_sizes, observe=observe_rows
    ).setup(x, **probe)


def test_time_guide(method: str, model: Callable, guide: torch.nn.Module, *, local_steps: int = 100) -> LocalGuide:
    """The guide that infers q for new data: the trained guide itself, or local optimization for per-datapoint.

    Usage::

        evaluator = test_time_guide("per_datapoint", model, trained_guide, local_steps=100)
        evaluator.elbo_trajectory(x_test)
    """
    if method == "per_datapoint":
        return OptimizingGuide(model, optimizer="adam", lr=1e-2, num_steps=local_steps)
    return guide


def stored_parameters(method: str, guide: torch.nn.Module) -> int:
    """Inference parameters of a trained guide (for per-datapoint: the stored q parameters, global sites excluded)."""
    if method == "per_datapoint":
        return sum(value.numel() for site in guide.layout.local_sites for value in guide._get_loc_and_scale(site.name))
    return inference_parameters(guide)
