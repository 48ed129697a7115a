"""Corpora of word counts: a synthetic LDA-like generator and a loader of user count matrices.

This module holds :func:`synthetic_corpus` (an LDA-like generator of document-word count matrices),
:func:`load_counts` (user count matrices from ``.npy`` / ``.npz`` files or arrays in memory) and
:func:`check_counts` (the check that values are non-negative integers, shared with the bag-of-words model). It does not
hold the bag-of-words model, its likelihood or its perplexity; those live with the reference models, which import this
module (never the other way round).
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .arrays import load_array

__all__ = ["check_counts", "load_counts", "synthetic_corpus"]


def synthetic_corpus(
    num_documents: int,
    vocab_size: int = 100,
    num_topics: int = 5,
    mean_length: float = 50,
    seed: int = 0,
    *,
    topic_concentration: float = 0.1,
    document_concentration: float = 0.5,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """
    An LDA-like corpus of word counts: ``num_topics`` topics ``beta_t ~ Dirichlet(topic_concentration)`` over the
    vocabulary; for each document, topic proportions ``theta ~ Dirichlet(document_concentration)``, a length
    ``n = max(1, Poisson(mean_length))`` and counts ``x ~ Multinomial(n, theta @ beta)``. Randomness comes from a
    private :class:`numpy.random.Generator` seeded with ``seed`` (the global RNGs are untouched), so the result depends
    only on the arguments.

    Usage::

        counts = synthetic_corpus(1000, vocab_size=100, num_topics=5, mean_length=50, seed=0)
        counts.shape            # (1000, 100), float counts; every row sums to at least 1
        model = BagOfWords(vocab_size=100)

    :param int num_documents: number of documents ``N`` (at least 1).
    :param int vocab_size: number of words ``V`` (at least 2).
    :param int num_topics: number of topics (at least 1).
    :param float mean_length: mean of the Poisson document length (positive).
    :param int seed: non-negative seed.
    :param float topic_concentration: symmetric Dirichlet concentration of each topic's word distribution (small values
        give peaked topics).
    :param float document_concentration: symmetric Dirichlet concentration of each document's topic proportions.
    :param torch.dtype dtype: floating point dtype of the result.
    :return: tensor of shape ``(num_documents, vocab_size)`` holding non-negative integer counts.
    """
    for name, value, low in (
        ("num_documents", num_documents, 1),
        ("vocab_size", vocab_size, 2),
        ("num_topics", num_topics, 1),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (
        ("mean_length", mean_length),
        ("topic_concentration", topic_concentration),
        ("document_concentration", document_concentration),
    ):
        if not (0 < float(value) < math.inf):
            raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point torch dtype, got {dtype}")
    rng = np.random.default_rng(int(seed))
    topics = rng.dirichlet(np.full(int(vocab_size), float(topic_concentration)), size=int(num_topics))  # (K, V)
    proportions = rng.dirichlet(np.full(int(num_topics), float(document_concentration)), size=int(num_documents))
    lengths = np.maximum(rng.poisson(float(mean_length), size=int(num_documents)), 1)
    word_probs = proportions @ topics
    word_probs /= word_probs.sum(-1, keepdims=True)
    counts = rng.multinomial(lengths, word_probs)  # (N, V): one length per row
    return torch.from_numpy(counts.astype(np.float64)).to(dtype)


def load_counts(
    path: str | os.PathLike | np.ndarray | Tensor, *, key: str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """
    Load a user's document-word count matrix, one document per row, from a ``.npy`` / ``.npz`` file (or an array
    already in memory) with :func:`pyro_iterative.data.load_array`, and check that it holds non-negative integers.

    Counts stored as ``uint8`` are kept as counts (``load_array`` alone would read them as grey levels and divide them
    by 255). Documents without words are allowed.

    Usage::

        counts = load_counts("counts.npy")                 # (num_documents, vocab_size), float32 counts
        counts = load_counts("corpus.npz", key="train")
        model = BagOfWords(vocab_size=counts.shape[1])

    :param path: the path of a ``.npy`` or ``.npz`` file, or a :class:`numpy.ndarray` / :class:`torch.Tensor`.
    :param str key: name of the array inside a ``.npz`` archive; may be left out when the archive holds exactly one.
    :param torch.dtype dtype: floating point dtype of the result (``float32`` holds counts exactly up to ``2**24``).
    :return: tensor of shape ``(num_documents, vocab_size)``.
    :raises ValueError: if the values are not non-negative integers (the message says how many and where the first
        is), and for everything :func:`~pyro_iterative.data.load_array` refuses.
    """
    grey_levels = False
    if isinstance(path, Tensor) and path.dtype == torch.uint8:
        path = path.to(torch.int64)
    elif isinstance(path, (np.ndarray, np.generic)) and np.asarray(path).dtype == np.uint8:
        path = np.asarray(path).astype(np.int64)
    elif isinstance(path, (str, os.PathLike)):
        grey_levels = True  # decided after load_array has checked the file
    counts = load_array(path, key=key, dtype=dtype)
    if grey_levels and _stored_dtype(Path(path).expanduser(), key) == np.uint8:
        counts = counts.mul_(255).round_()
    check_counts(counts, f"load_counts: the values of {_source_name(path)}")
    return counts


def check_counts(counts: Tensor, what: str, rows: Tensor | None = None) -> None:
    """
    Refuse values that are not non-negative integers (NaN included), saying how many and where the first is.

    Usage::

        check_counts(counts, "load_counts: the values of counts.npy")     # the message names the row
        check_counts(x[idx], "BagOfWords: the word counts x", rows=idx)   # ... or the datapoint rows[row]

    :param torch.Tensor counts: floating point counts of shape ``(rows, columns)``.
    :param str what: what the values are; the message starts with ``"<what> must be non-negative integers"``.
    :param torch.Tensor rows: optional index of each row in the whole data set (a minibatch's indices); the message
        then names the datapoint ``rows[row]`` instead of the row.
    :raises ValueError: if a value is negative, fractional, NaN or infinite.
    """
    negative = counts < 0
    fractional = ~(counts == counts.round())  # NaN and inf - inf count as fractional
    fractional |= torch.isinf(counts)
    for problem, mask in (("negative", negative), ("fractional or non-finite", fractional & ~negative)):
        if bool(mask.any()):
            row, col = (int(i) for i in mask.nonzero()[0])
            where = f"row {row}" if rows is None else f"datapoint {int(rows[row])}"
            raise ValueError(
                f"{what} must be non-negative integers, but {int(mask.sum())} value(s) are {problem}; the first is "
                f"{float(counts[row, col])} at {where}, column {col}"
            )


def _stored_dtype(path: Path, key: str | None) -> np.dtype | None:
    """The dtype of the array stored in a ``.npy`` file or a ``.npz`` member, read from its header only."""
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded.dtype
        with loaded:
            name = key if key is not None else loaded.files[0]
        with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as member:
            version = np.lib.format.read_magic(member)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return reader(member)[2]
    except Exception:  # a header this shortcut cannot read: treat as not uint8 (fractional values are refused next)
        return None


def _source_name(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "the tensor" if isinstance(source, Tensor) else "the array"
