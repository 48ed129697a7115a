"""The data sets a comparison can run on, declared once each, and the split a run trains and evaluates on.

:data:`DATASETS` maps a name to a loader of ``(x_train, x_test)``; any other ``--dataset`` is read as the user's
``.npy``/``.npz`` file by the model's own loader (:attr:`~pyro_iterative.experiments.registry.ModelSpec.load_file`)
and split 80/20 with a fixed seed. :func:`evaluation_data` applies a run's training-set size, evaluation size and
fixed evaluation binarization, and :func:`validation_data` the validation set a run with ``--validation`` carves out of
the training set (seeded, stratified by class where the data set gives training labels), which the test set never
joins. The loaders themselves live in :mod:`pyro_iterative.data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import models
from ..data.binarization import static_binarize
from ..data.chorales import cut_sequences, load_chorales, nan_padded
from ..data.corpora import synthetic_corpus
from ..data.mnist import load_mnist, load_mnist5k, stratified_split
from .config import RunConfig
from .registry import MODELS, Registry

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "evaluation_data",
    "train_test_split",
    "validation_data",
    "validation_rows",
]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set: ``load(config)`` gives ``(x_train, x_test)``, datapoints on dim 0;
    ``test_labels(config)``, where given, the class of each test datapoint (for the accuracy of models that classify);
    ``train_labels(config)``, where given, the class of each training datapoint (a validation set is then stratified).
    """

    name: str
    load: Callable[[RunConfig], tuple[torch.Tensor, torch.Tensor]]
    test_labels: Callable[[RunConfig], torch.Tensor] | None = None
    train_labels: Callable[[RunConfig], torch.Tensor] | None = None


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


def _mnist5k_train_labels(config: RunConfig) -> torch.Tensor:
    return load_mnist5k(seed=0).y_train


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
DATASETS.register(DatasetSpec("mnist5k", _mnist5k, train_labels=_mnist5k_train_labels))
DATASETS.register(DatasetSpec("mnist", _mnist))
DATASETS.register(DatasetSpec("mnist5k-labelled", _mnist5k_labelled, _mnist5k_test_labels, _mnist5k_train_labels))
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


def _train_and_test(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if config.dataset in DATASETS:
        return DATASETS[config.dataset].load(config)
    # the user's own file, read by the model's loader (word counts for bag-of-words models)
    return train_test_split(MODELS[config.model].load_file(config.dataset))


def validation_rows(config: RunConfig, num_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices ``(train, valid)`` into the data set's training set of ``num_train`` rows: ``config.validation``
    rows held out for validation, seeded by ``config.seed`` and stratified by class where the data set gives training
    labels (``train_labels`` of its :class:`DatasetSpec`); every row when ``config.validation`` is ``None``
    (``valid`` empty).

    Usage::

        train, valid = validation_rows(RunConfig(validation=500), 4000)   # 3500 and 500 rows, 50 per digit class
    """
    if config.validation is None:
        return torch.arange(num_train), torch.arange(0)
    if not 0 < config.validation < num_train:
        raise ValueError(f"--validation {config.validation} must leave training data: the training set has "
                         f"{num_train} datapoints; choose fewer.")
    spec = DATASETS[config.dataset] if config.dataset in DATASETS else None
    if spec is not None and spec.train_labels is not None:
        train, valid = stratified_split(spec.train_labels(config).numpy(), config.validation, config.seed)
        return torch.from_numpy(train), torch.from_numpy(valid)
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(config.seed))
    return order[config.validation:], order[: config.validation]


def evaluation_data(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_train, x_eval)``: the training data (grey levels; without the validation rows when ``config.validation``
    is set) and the fixed evaluation set drawn from the test set, on ``config.device``.

    Usage::

        x_train, x_eval = evaluation_data(RunConfig.quick())
    """
    x_train, x_test = _train_and_test(config)
    x_train = x_train[validation_rows(config, len(x_train))[0]]
    if config.train_size is not None:
        x_train = x_train[: config.train_size]
    x_eval = x_test[: config.eval_datapoints]
    if config.binarize != "none":
        x_eval = static_binarize(x_eval, seed=config.seed)  # one fixed binarization for every evaluation
    return x_train.to(config.device), x_eval.to(config.device)


def validation_data(config: RunConfig) -> torch.Tensor:
    """The validation set of a run with ``config.validation``: rows of the training set that
    :func:`evaluation_data` leaves out (never a test row), binarized once like the evaluation set, on
    ``config.device``.

    Usage::

        x_valid = validation_data(RunConfig(validation=500))
    """
    if config.validation is None:
        raise ValueError("This run has no validation set: give --validation N.")
    x_train, _ = _train_and_test(config)
    x_valid = x_train[validation_rows(config, len(x_train))[1]]
    if config.binarize != "none":
        x_valid = static_binarize(x_valid, seed=config.seed + 1)
    return x_valid.to(config.device)
