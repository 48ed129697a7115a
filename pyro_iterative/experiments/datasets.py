"""The data sets a comparison can run on, declared once each, and the split a run trains and evaluates on.

:data:`DATASETS` maps a name to a loader of ``(x_train, x_test)``; any other ``--dataset`` is read as the user's
``.npy``/``.npz`` file by the model's own loader (:attr:`~pyro_iterative.experiments.registry.ModelSpec.load_file`)
and split 80/20 with a fixed seed. :func:`evaluation_data` applies a run's training-set size, evaluation size and
fixed evaluation binarization. The loaders themselves live in :mod:`pyro_iterative.data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import models
from ..data.binarization import static_binarize
from ..data.chorales import cut_sequences, load_chorales, nan_padded
from ..data.corpora import synthetic_corpus
from ..data.mnist import load_mnist, load_mnist5k
from .config import RunConfig
from .registry import MODELS, Registry

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "evaluation_data",
    "train_test_split",
]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set: ``load(config)`` gives ``(x_train, x_test)``, datapoints on dim 0;
    ``test_labels(config)``, where given, the class of each test datapoint (for the accuracy of models that classify).
    """

    name: str
    load: Callable[[RunConfig], tuple[torch.Tensor, torch.Tensor]]
    test_labels: Callable[[RunConfig], torch.Tensor] | None = None


def _corpus(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    data = synthetic_corpus(5000, vocab_size=100, seed=0)
    return data[:4000], data[4000:]


def _mnist5k(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    split = load_mnist5k(seed=0)
    return split.x_train, split.x_test


#: Labelled training digits per class of ``mnist5k-labelled`` (300 labels in all, as in few-label M2 studies).
LABELS_PER_CLASS = 30


def _mnist5k_labelled(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    # Binarized once (seeded) so that the label column is never binarized with the pixels; test labels hidden.
    split = load_mnist5k(seed=0)
    x_train, x_test = static_binarize(split.x_train, seed=0), static_binarize(split.x_test, seed=1)
    rank = torch.zeros_like(split.y_train)
    for label in split.y_train.unique():
        rows = (split.y_train == label).nonzero().squeeze(-1)
        rank[rows] = torch.arange(len(rows))
    known = rank < LABELS_PER_CLASS
    unknown = torch.zeros(len(x_test), dtype=torch.bool)
    return models.with_labels(x_train, split.y_train, known), models.with_labels(x_test, split.y_test, unknown)


def _mnist5k_test_labels(config: RunConfig) -> torch.Tensor:
    return load_mnist5k(seed=0).y_test


#: Steps of the pieces the ``chorales`` data set cuts the chorales into (16 bars of 4/4 at one step per quarter note).
CHORALE_STEPS = 64


def _chorales(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    # Split by chorale (seed 0; the validation chorales are not used), then cut into pieces of at most CHORALE_STEPS
    # steps, NaN-padded to one length: the DMM runs every batch over the padded length, so pieces bound its cost.
    split = load_chorales(seed=0)
    pieces = [cut_sequences(x, lengths, CHORALE_STEPS) for x, lengths in
              ((split.train, split.train_lengths), (split.test, split.test_lengths))]
    return tuple(nan_padded(x, lengths, CHORALE_STEPS) for x, lengths in pieces)


def _mnist(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    split = load_mnist(config.data_dir)
    return split.x_train, split.x_test


#: The named data sets of ``--dataset``.
DATASETS: Registry[DatasetSpec] = Registry("data set")
DATASETS.register(DatasetSpec("mnist5k", _mnist5k))
DATASETS.register(DatasetSpec("mnist", _mnist))
DATASETS.register(DatasetSpec("mnist5k-labelled", _mnist5k_labelled, _mnist5k_test_labels))
DATASETS.register(DatasetSpec("corpus", _corpus))
DATASETS.register(DatasetSpec("chorales", _chorales))


def train_test_split(data: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded 80/20 split of the rows of ``data`` (at least one test row).

    Usage::

        x_train, x_test = train_test_split(load_array("my_data.npy"))
    """
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    cut = max(1, len(data) // 5)
    return data[order[cut:]], data[order[:cut]]


def evaluation_data(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_train, x_eval)``: the training data (grey levels) and the fixed evaluation set, on ``config.device``.

    Usage::

        x_train, x_eval = evaluation_data(RunConfig.quick())
    """
    if config.dataset in DATASETS:
        x_train, x_test = DATASETS[config.dataset].load(config)
    else:  # the user's own file, read by the model's loader (word counts for bag-of-words models)
        x_train, x_test = train_test_split(MODELS[config.model].load_file(config.dataset))
    if config.train_size is not None:
        x_train = x_train[: config.train_size]
    x_eval = x_test[: config.eval_datapoints]
    if config.binarize != "none":
        x_eval = static_binarize(x_eval, seed=config.seed)  # one fixed binarization for every evaluation
    return x_train.to(config.device), x_eval.to(config.device)
