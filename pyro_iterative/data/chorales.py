"""Sequences of binary vectors: Bach chorales as piano rolls, user sequences and a synthetic generator.

This module holds :class:`ChoraleSplit` (a train/valid/test triple of padded piano rolls and their lengths),
:func:`load_chorales` (the Bach chorales shipped inside the optional ``music21`` package, no download, parsed once into
88-key binary piano rolls and cached), :func:`load_sequences` (user sequences from an ``.npz`` file),
:func:`synthetic_sequences` (a seeded generator of binary sequences from a small hidden Markov chain, for tests) and
:func:`sequence_mask` (which steps of padded sequences are real). It does not hold sequence models (the deep Markov
model lives with the reference models), guides or minibatching (done through ``pyro.plate`` subsampling in the models).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ChoraleSplit",
    "cut_sequences",
    "load_chorales",
    "load_sequences",
    "nan_padded",
    "sequence_mask",
    "synthetic_sequences",
]

#: the 88 keys of a piano: MIDI pitches 21 (A0) to 108 (C8) become keys 0 to 87
NUM_KEYS = 88
_LOWEST_PITCH = 21
#: bumped whenever the parsing or the cache layout changes, so that old cache files are not read
_CACHE_VERSION = 1
_SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn")  # the Bach corpus also holds .rntxt analyses: not scores
_VOICES = ("soprano", "alto", "tenor", "bass")


@dataclass(frozen=True)
class ChoraleSplit:
    """
    A train/valid/test split of Bach chorales as binary piano rolls, split by chorale.

    Each split holds zero-padded rolls of shape ``(n, T_max, 88)`` (``T_max`` is the length of that split's longest
    chorale) and the length of each chorale; ``x[i, t, k] == 1`` when key ``k`` (MIDI pitch ``21 + k``) sounds at step
    ``t`` of chorale ``i``, and every step ``t >= lengths[i]`` is zero.

    Usage::

        split = load_chorales()
        split.train.shape, split.train_lengths.shape        # (n_train, T_max, 88), (n_train,)
        [split.names[i] for i in split.test_index[:3]]      # which chorales are in the test set
        mask = sequence_mask(split.train_lengths, split.train.shape[1])

    :ivar torch.Tensor train: training rolls, shape ``(n_train, T_train, 88)``, values 0 and 1.
    :ivar torch.Tensor train_lengths: number of steps of each training chorale, ``int64``, shape ``(n_train,)``.
    :ivar torch.Tensor valid: validation rolls, shape ``(n_valid, T_valid, 88)``.
    :ivar torch.Tensor valid_lengths: lengths of the validation chorales, ``int64``.
    :ivar torch.Tensor test: test rolls, shape ``(n_test, T_test, 88)``.
    :ivar torch.Tensor test_lengths: lengths of the test chorales, ``int64``.
    :ivar torch.Tensor train_index: position in ``names`` of each training chorale, ``int64``.
    :ivar torch.Tensor valid_index: position in ``names`` of each validation chorale, ``int64``.
    :ivar torch.Tensor test_index: position in ``names`` of each test chorale, ``int64``.
    :ivar tuple names: the file name of every chorale (``"bwv1.6.mxl"``, ...), in parsing order.
    :ivar tuple skipped: the file name of every work that was parsed but left out, each followed by why (not a
        four-voice chorale, or the parse error); ``len(skipped)`` is their count.
    :ivar float time_quantum: the duration of one step, in quarter notes.
    """

    train: Tensor
    train_lengths: Tensor
    valid: Tensor
    valid_lengths: Tensor
    test: Tensor
    test_lengths: Tensor
    train_index: Tensor
    valid_index: Tensor
    test_index: Tensor
    names: tuple[str, ...]
    skipped: tuple[str, ...]
    time_quantum: float


# ---------------------------------------------------------------- helpers shared by every kind of sequence


def sequence_mask(lengths: Tensor | Sequence[int], max_length: int | None = None) -> Tensor:
    """
    Which steps of zero-padded sequences are real: ``mask[i, t] = t < lengths[i]``.

    Usage::

        mask = sequence_mask(torch.tensor([3, 1]), 4)
        # tensor([[ True,  True,  True, False],
        #         [ True, False, False, False]])

    :param lengths: the length of each sequence, non-negative integers, shape ``(N,)``.
    :param int max_length: number of steps ``T`` of the padded sequences; ``None`` means ``max(lengths)`` (0 when
        there are no sequences).
    :return: ``bool`` tensor of shape ``(N, T)`` on the device of ``lengths``.
    :raises ValueError: if ``lengths`` is not 1-d, holds negative or fractional values, or a length exceeds
        ``max_length``.
    """
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-d (one length per sequence), got shape {tuple(lengths.shape)}")
    if lengths.is_floating_point():
        if not bool((lengths == lengths.round()).all()):
            raise ValueError("lengths must be integers, got fractional values: pass whole numbers of steps")
        lengths = lengths.long()
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be non-negative, got {int(lengths.min())}")
    longest = int(lengths.max()) if lengths.numel() else 0
    if max_length is None:
        max_length = longest
    elif isinstance(max_length, bool) or int(max_length) != max_length or max_length < 0:
        raise ValueError(f"max_length must be a non-negative integer, got {max_length!r}")
    elif longest > max_length:
        raise ValueError(f"a sequence has length {longest}, more than max_length={max_length}: raise max_length")
    return torch.arange(int(max_length), device=lengths.device) < lengths.unsqueeze(-1)


def cut_sequences(sequences: Tensor, lengths: Tensor, max_steps: int) -> tuple[Tensor, Tensor]:
    """Cut every sequence longer than ``max_steps`` into consecutive pieces of ``max_steps`` steps (the last piece
    shorter), keeping the order: ``(pieces, piece_lengths)`` zero-padded to ``min(max_steps, T_max)`` steps. Pieces of
    one sequence stay together, so cutting after a split by sequence keeps the split.

    Usage::

        pieces, piece_lengths = cut_sequences(split.train, split.train_lengths, 64)

    :param sequences: ``(N, T_max, D)`` zero-padded sequences.
    :param lengths: ``(N,)`` integer lengths.
    :param int max_steps: the longest piece (at least 1).
    """
    if isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    pieces, piece_lengths = [], []
    for sequence, length in zip(sequences, lengths.tolist()):
        for start in range(0, max(int(length), 1), int(max_steps)):
            piece_lengths.append(min(int(max_steps), int(length) - start))
            pieces.append(sequence[start: start + int(max_steps)])
    steps = min(int(max_steps), sequences.shape[1])
    out = sequences.new_zeros(len(pieces), steps, sequences.shape[2])
    for i, (piece, length) in enumerate(zip(pieces, piece_lengths)):
        out[i, :length] = piece[:length]
    return out, torch.tensor(piece_lengths, dtype=torch.int64)


def nan_padded(sequences: Tensor, lengths: Tensor, max_steps: int | None = None) -> Tensor:
    """Sequences with NaN in place of their padding, on ``max_steps`` steps (default: as they are): one tensor that
    carries the lengths, read back by :meth:`pyro_iterative.models.DMM.nan_padded_lengths`.

    Usage::

        x = nan_padded(split.train, split.train_lengths)
        model(x, subsample_size=20)          # a DMM reads the lengths from the NaN steps
    """
    steps = sequences.shape[1] if max_steps is None else int(max_steps)
    if int(lengths.max()) > steps:
        raise ValueError(f"a sequence has {int(lengths.max())} steps, more than max_steps={steps}")
    out = sequences.new_full((sequences.shape[0], steps, sequences.shape[2]), math.nan)
    keep = min(steps, sequences.shape[1])
    out[:, :keep] = sequences[:, :keep]
    out[~sequence_mask(lengths, steps)] = math.nan
    return out


def synthetic_sequences(
    num: int,
    max_length: int = 20,
    data_dim: int = 8,
    seed: int = 0,
    *,
    min_length: int | None = None,
    num_states: int = 3,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """
    Binary sequences of varying lengths drawn from a small random hidden Markov chain, zero-padded to ``max_length``.

    A chain of ``num_states`` hidden states gets a "sticky" transition matrix (each row ``Dirichlet(1)`` plus weight
    on staying) and, per state, independent Bernoulli probabilities for the ``data_dim`` features
    (``Beta(0.3, 0.3)``, mostly near 0 or 1). Each sequence has a length drawn uniformly from
    ``min_length..max_length``, starts in a uniformly drawn state and emits one binary vector per step. Randomness
    comes from a private :class:`numpy.random.Generator` seeded with ``seed`` (the global RNGs are untouched), so the
    result depends only on the arguments.

    Usage::

        sequences, lengths = synthetic_sequences(16, max_length=20, data_dim=8, seed=0)
        sequences.shape, lengths.shape     # (16, 20, 8), (16,); sequences[i, lengths[i]:] == 0
        model = DMM(data_dim=8, z_dim=4, transition_dim=16, emission_dim=16)

    :param int num: number of sequences ``N`` (at least 1).
    :param int max_length: number of steps ``T`` of the padded sequences (at least 1).
    :param int data_dim: number of binary features ``D`` per step (at least 1).
    :param int seed: non-negative seed.
    :param int min_length: shortest length, between 1 and ``max_length``; ``None`` means ``max(1, max_length // 2)``.
    :param int num_states: number of hidden states of the chain (at least 1).
    :param torch.dtype dtype: floating point dtype of the sequences.
    :return: ``(sequences, lengths)``: a tensor of shape ``(num, max_length, data_dim)`` holding 0 and 1 (0 beyond each
        length) and an ``int64`` tensor of shape ``(num,)``.
    """
    if min_length is None:
        min_length = max(1, int(max_length) // 2) if _is_integer_at_least(max_length, 1) else 1
    for name, value, low in (
        ("num", num, 1),
        ("max_length", max_length, 1),
        ("data_dim", data_dim, 1),
        ("seed", seed, 0),
        ("min_length", min_length, 1),
        ("num_states", num_states, 1),
    ):
        if not _is_integer_at_least(value, low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if min_length > max_length:
        raise ValueError(f"min_length={min_length} is more than max_length={max_length}: lower it or raise max_length")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point torch dtype, got {dtype}")
    num, max_length, data_dim, num_states = int(num), int(max_length), int(data_dim), int(num_states)
    rng = np.random.default_rng(int(seed))
    transitions = rng.dirichlet(np.ones(num_states), size=num_states) + 2.0 * np.eye(num_states)
    transitions /= transitions.sum(-1, keepdims=True)
    emissions = rng.beta(0.3, 0.3, size=(num_states, data_dim))
    lengths = rng.integers(int(min_length), max_length + 1, size=num)
    sequences = np.zeros((num, max_length, data_dim))
    for i, length in enumerate(lengths):
        state = rng.integers(num_states)
        for t in range(length):
            sequences[i, t] = rng.random(data_dim) < emissions[state]
            state = rng.choice(num_states, p=transitions[state])
    return torch.from_numpy(sequences).to(dtype), torch.from_numpy(lengths.astype(np.int64))


def load_sequences(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """
    Load a user's zero-padded sequences from an ``.npz`` archive (read without pickle) holding two arrays:
    ``sequences`` of shape ``(N, T, D)`` (bool, integer or float values, e.g. binary piano rolls) and ``lengths`` of
    shape ``(N,)`` (integers between 1 and ``T``). Only the first ``lengths[i]`` steps of sequence ``i`` are read:
    the padding beyond them is set to zero (it may hold anything, NaN included).

    Usage::

        numpy.savez("songs.npz", sequences=rolls, lengths=lengths)   # rolls (N, T, 88), lengths (N,)
        sequences, lengths = load_sequences("songs.npz")
        model = DMM(data_dim=sequences.shape[-1])

    :param path: the path of the ``.npz`` file (``~`` is expanded).
    :param torch.dtype dtype: floating point dtype of the sequences.
    :return: ``(sequences, lengths)``: a tensor of shape ``(N, T, D)`` and an ``int64`` tensor of shape ``(N,)``.
    :raises FileNotFoundError: if the file does not exist.
    :raises ValueError: if the file is not a readable ``.npz`` archive, an array is missing, has the wrong shape or a
        non-numeric dtype, a length is fractional or outside ``1..T``, or a value within the lengths is NaN or
        infinite (the message says where).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point torch dtype, got {dtype}")
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"sequence file {path} {what}")
    sequences, lengths = _read_sequence_archive(path)
    if sequences.dtype.kind not in "biuf" or lengths.dtype.kind not in "biuf":
        bad = "sequences" if sequences.dtype.kind not in "biuf" else "lengths"
        dtype_found = sequences.dtype if bad == "sequences" else lengths.dtype
        raise ValueError(
            f"{path}: {bad} has dtype {dtype_found}; it must hold real numbers (bool, integer or float): "
            "convert it with numpy.asarray(..., dtype=numpy.float32) before saving"
        )
    if sequences.ndim != 3:
        raise ValueError(
            f"{path}: sequences has shape {sequences.shape}, but it must be (N, T, D): N sequences of T steps with D "
            "values each (reshape a single feature to (N, T, 1))"
        )
    num, max_length, _ = sequences.shape
    if lengths.shape != (num,):
        raise ValueError(
            f"{path}: lengths has shape {lengths.shape}, but sequences holds {num} sequences, so it must be ({num},)"
        )
    if num == 0 or max_length == 0 or sequences.shape[2] == 0:
        raise ValueError(
            f"{path}: sequences is empty (shape {sequences.shape}): save at least one step of one sequence"
        )
    if lengths.dtype.kind == "f" and not np.all(np.isfinite(lengths) & (lengths == np.round(lengths))):
        first = int(np.flatnonzero(~(np.isfinite(lengths) & (lengths == np.round(lengths))))[0])
        raise ValueError(f"{path}: lengths must be whole numbers of steps, but lengths[{first}] = {lengths[first]}")
    lengths = lengths.astype(np.int64)
    outside = (lengths < 1) | (lengths > max_length)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{path}: every length must be between 1 and T={max_length} (the number of steps of sequences), but "
            f"{int(outside.sum())} are not; the first is lengths[{first}] = {lengths[first]}"
        )
    mask = np.arange(max_length) < lengths[:, None]  # (N, T)
    values = np.where(mask[:, :, None], sequences, 0).astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i, t, d = (int(k) for k in np.argwhere(bad)[0])
        raise ValueError(
            f"{path}: sequences has {int(bad.sum())} non-finite value(s) (NaN or inf) within the lengths; the first is "
            f"{sequences[i, t, d]} at sequence {i}, step {t}, feature {d}: remove or impute them before saving"
        )
    result = torch.from_numpy(values).to(dtype)
    if not bool(torch.isfinite(result).all()):
        raise ValueError(f"{path}: some values are too large for {dtype}: pass dtype=torch.float64 or rescale them")
    return result, torch.from_numpy(lengths)


def _read_sequence_archive(path: Path) -> tuple[np.ndarray, np.ndarray]:
    unreadable = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        loaded = np.load(path, allow_pickle=False)
    except unreadable as error:
        raise ValueError(f"cannot read {path} as a .npz archive: {type(error).__name__}: {error}") from error
    if isinstance(loaded, np.ndarray):
        raise ValueError(
            f"{path} holds a single array; load_sequences needs a .npz archive with two arrays: "
            "numpy.savez(path, sequences=sequences, lengths=lengths)"
        )
    with loaded:
        missing = [key for key in ("sequences", "lengths") if key not in loaded.files]
        if missing:
            raise ValueError(
                f"{path} has no array named {' or '.join(map(repr, missing))} (its arrays are {list(loaded.files)}): "
                "save it with numpy.savez(path, sequences=sequences, lengths=lengths)"
            )
        try:
            return np.asarray(loaded["sequences"]), np.asarray(loaded["lengths"])
        except unreadable as error:
            raise ValueError(f"cannot read the arrays of {path}: {type(error).__name__}: {error}") from error


def _is_integer_at_least(value: Any, low: int) -> bool:
    try:
        return not isinstance(value, bool) and int(value) == value and value >= low
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- Bach chorales from the music21 corpus


def _import_music21() -> Any:
    try:
        import music21
    except ImportError as error:
        raise ImportError(
            "load_chorales() needs music21, which ships the Bach chorales: "
            'pip install "pyro-iterative[music]" (or pip install "music21>=8")'
        ) from error
    return music21


def _default_cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache).expanduser() / "pyro-iterative"


def _chorale_files(music21: Any) -> list[Path]:
    """The score files of music21's Bach corpus, one per work, sorted by name (a ``.krn`` copy of a work that is also
    there as MusicXML is left out)."""
    files: dict[str, Path] = {}
    for path in sorted(Path(p) for p in music21.corpus.getComposer("bach")):
        suffix = path.suffix.lower()
        if suffix not in _SCORE_SUFFIXES:
            continue
        stem = path.name[: -len(suffix)]
        if stem not in files or files[stem].suffix.lower() == ".krn":
            files[stem] = path
    return sorted(files.values(), key=lambda p: p.name)


def _voice_parts(score: Any) -> list[Any] | None:
    """The soprano, alto, tenor and bass parts of a score, found by the first word of the part names (the first of
    each when there are two, e.g. "Soprano 1"; a score of exactly four unnamed parts is taken as it is), or None when
    the score is not a four-voice chorale."""
    parts = list(score.parts)
    found = {}
    for part in parts:
        name = (part.partName or "").strip().lower()
        for voice in _VOICES:
            if re.match(rf"{voice}(?![a-z])", name) and voice not in found:  # "Soprano 1", "Bass Continuo"
                found[voice] = part
    if len(found) == len(_VOICES):
        return [found[voice] for voice in _VOICES]
    if len(parts) == len(_VOICES) and not any((part.partName or "").strip() for part in parts):
        return parts
    return None


def _parse_chorale(path: Path, time_quantum: float) -> np.ndarray | None:
    """The piano roll of one chorale, ``bool`` of shape ``(T, 88)``, or None when the work is not a four-voice chorale.

    Step ``t`` covers the time ``[t q, (t + 1) q)`` (in quarter notes, ``q = time_quantum``) and key ``k`` is on at
    step ``t`` when a note of MIDI pitch ``21 + k`` sounds at time ``t q`` (the instant at the start of the step), so
    notes shorter than ``q`` that start between two steps are not seen. Ties need no special handling (the tied notes
    are contiguous), repeats are not expanded, grace notes (no duration) are left out, and so are pitches outside the
    piano's range."""
    music21 = _import_music21()
    score = music21.converter.parse(str(path), forceSource=True)  # no pickles in music21's scratch folder
    voices = _voice_parts(score)
    if voices is None:
        return None
    quantum = Fraction(time_quantum).limit_denominator(1 << 16)
    notes = []  # (first step, end step, key)
    end_time = Fraction(0)
    for part in voices:
        for element in part.flatten().notes:
            start = Fraction(element.offset).limit_denominator(1 << 16)
            duration = Fraction(element.quarterLength).limit_denominator(1 << 16)
            if duration <= 0:
                continue
            end_time = max(end_time, start + duration)
            first, end = math.ceil(start / quantum), math.ceil((start + duration) / quantum)
            for pitch in getattr(element, "pitches", ()):
                key = int(round(pitch.ps)) - _LOWEST_PITCH
                if 0 <= key < NUM_KEYS and end > first:
                    notes.append((first, end, key))
    length = math.ceil(end_time / quantum)
    if length == 0:
        return None
    roll = np.zeros((length, NUM_KEYS), dtype=bool)
    for first, end, key in notes:
        roll[first:end, key] = True
    return roll


def _cache_path(directory: Path, settings: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return directory / f"chorales-{digest}.npz"


def _read_cache(path: Path) -> tuple[list[np.ndarray], list[str], list[str]] | None:
    """The rolls, names and skipped works stored in a cache file, or None when it is missing or cannot be read."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            rolls, lengths = stored["rolls"], stored["lengths"]
            names, skipped = stored["names"], stored["skipped"]
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
        return None  # damaged or from another layout: parse again and overwrite it
    if (
        rolls.ndim != 2
        or rolls.shape[1] != NUM_KEYS
        or lengths.ndim != 1
        or names.shape != lengths.shape
        or skipped.ndim != 1
        or (lengths.size and lengths.min() < 1)
        or int(lengths.sum()) != len(rolls)
    ):
        return None
    bounds = np.cumsum(lengths)[:-1]
    rolls = list(np.split(rolls.astype(bool), bounds)) if lengths.size else []
    return rolls, [str(name) for name in names], [str(name) for name in skipped]


def _write_cache(path: Path, rolls: list[np.ndarray], names: list[str], skipped: list[str]) -> None:
    """Write the rolls atomically: into a temporary file of the same directory, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez_compressed(
                stream,
                rolls=np.concatenate(rolls) if rolls else np.zeros((0, NUM_KEYS), dtype=bool),
                lengths=np.array([len(roll) for roll in rolls], dtype=np.int64),
                names=np.array(names, dtype=str),
                skipped=np.array(skipped, dtype=str),
            )
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _check_splits(splits: Sequence[float]) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(f) for f in splits)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or not all(0 <= f <= 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"splits must be three fractions (train, valid, test) between 0 and 1 that sum to 1, got {splits!r}: "
            "e.g. splits=(0.6, 0.2, 0.2)"
        )
    if fractions[0] == 0:
        raise ValueError(f"splits={splits!r} leaves no training chorale: give the training set a positive fraction")
    return fractions


def _split_counts(num: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Numbers of training and validation chorales out of ``num`` (the test set gets the rest)."""
    num_valid, num_test = round(fractions[1] * num), round(fractions[2] * num)
    num_train = num - num_valid - num_test
    if num_train < 1:
        raise ValueError(
            f"splits={fractions} leaves no training chorale out of {num}: raise the training fraction or the limit"
        )
    return num_train, num_valid


def _pad(rolls: list[np.ndarray], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    lengths = np.array([len(roll) for roll in rolls], dtype=np.int64)
    padded = np.zeros((len(rolls), int(lengths.max()) if len(rolls) else 0, NUM_KEYS), dtype=bool)
    for i, roll in enumerate(rolls):
        padded[i, : len(roll)] = roll
    return torch.from_numpy(padded).to(dtype), torch.from_numpy(lengths)


def load_chorales(
    *,
    time_quantum: float = 1.0,
    seed: int = 0,
    splits: Sequence[float] = (0.6, 0.2, 0.2),
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    limit: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> ChoraleSplit:
    """
    The Bach chorales shipped inside ``music21`` (no download) as 88-key binary piano rolls, split by chorale into a
    seeded train/valid/test triple. JSB Chorales (Boulanger-Lewandowski, Bengio & Vincent, ICML 2012), the data set of
    the deep Markov model, was built from the same four-part chorales, at one step per quarter note.

    The works are the score files of ``music21.corpus.getComposer("bach")`` (MusicXML or Humdrum; a Humdrum copy of a
    work also there as MusicXML is not read), sorted by file name. A work is used when it is a four-voice chorale: it
    has parts named Soprano, Alto, Tenor and Bass (other parts, such as doubling horns, strings or continuo, are left
    out) or exactly four unnamed parts. Other works (e.g. a keyboard prelude) and files that fail to parse are
    skipped and listed in ``ChoraleSplit.skipped``; parse failures also raise a :class:`UserWarning`.

    All four voices go into one roll: key ``k`` (MIDI pitch ``21 + k``) is on at step ``t`` when it sounds at time
    ``t * time_quantum`` quarter notes (the sampling of JSB Chorales). With the default quarter-note steps, passing
    eighth notes between beats are not seen; ``time_quantum=0.5`` (eighth notes) keeps them, for sequences twice as
    long. Repeats are not expanded.

    The parse (a fraction of a second per work) is done once: the rolls are cached in ``cache_dir`` as an ``.npz``
    file whose name is derived from the parse settings (``time_quantum``, ``limit``, the music21 version), written
    atomically (a temporary file renamed over the cache file), so that an interrupted parse never leaves a damaged
    cache. The split, which depends only on ``seed`` and ``splits``, is drawn from the cached rolls on every call
    (through a :func:`numpy.random.default_rng` generator; the global RNGs are untouched).

    Usage::

        split = load_chorales()                              # first call: parses and caches (a few minutes)
        split.train.shape                                    # (n_train, T_max, 88)
        model = DMM(data_dim=88)
        model(split.train, split.train_lengths, subsample_size=20)
        split = load_chorales(time_quantum=0.5, limit=10)    # eighth-note steps, the first 10 chorales only

    :param float time_quantum: duration of one step in quarter notes (positive; 1.0: quarter notes, as JSB Chorales).
    :param int seed: seed of the split.
    :param splits: fractions ``(train, valid, test)`` of the chorales, between 0 and 1 and summing to 1; the numbers
        of validation and test chorales are rounded, the training set gets the rest (at least one chorale).
    :param cache_dir: directory of the cache file (``~`` is expanded, created when missing). ``None`` means
        ``$XDG_CACHE_HOME/pyro-iterative`` (``~/.cache/pyro-iterative`` when ``XDG_CACHE_HOME`` is unset).
    :param bool progress: show a ``tqdm`` progress bar while parsing.
    :param int limit: stop after the first ``limit`` chorales (in sorted order), e.g. for tests; ``None`` parses all.
    :param torch.dtype dtype: floating point dtype of the rolls.
    :return: :class:`ChoraleSplit`.
    :raises ImportError: if ``music21`` is not installed (``pip install "pyro-iterative[music]"``).
    :raises ValueError: if an argument is invalid, ``cache_dir`` is a file, or no chorale was found.
    """
    try:
        quantum = float(time_quantum)
    except (TypeError, ValueError):
        quantum = math.nan
    if not 0 < quantum < math.inf:
        raise ValueError(
            f"time_quantum must be a positive number of quarter notes (e.g. 1.0 or 0.5), got {time_quantum!r}"
        )
    if not _is_integer_at_least(seed, 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if limit is not None and not _is_integer_at_least(limit, 1):
        raise ValueError(f"limit must be a positive integer (or None for all chorales), got {limit!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point torch dtype, got {dtype}")
    fractions = _check_splits(splits)
    music21 = _import_music21()
    directory = _default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"cache_dir {directory} is a file, not a directory: pass a directory")
    settings = {
        "version": _CACHE_VERSION,
        "time_quantum": quantum,
        "limit": None if limit is None else int(limit),
        "music21": str(music21.__version__),
    }
    path = _cache_path(directory, settings)
    cached = _read_cache(path)
    if cached is None:
        rolls, names, skipped = _parse_corpus(music21, quantum, limit, progress)
        _write_cache(path, rolls, names, skipped)
    else:
        rolls, names, skipped = cached
    if not rolls:
        raise ValueError(
            f"no four-voice chorale found in music21's Bach corpus ({len(skipped)} works skipped): check the music21 "
            "installation"
        )
    num_train, num_valid = _split_counts(len(rolls), fractions)
    order = np.random.default_rng(int(seed)).permutation(len(rolls))
    parts = np.split(order, [num_train, num_train + num_valid])
    (train, train_lengths), (valid, valid_lengths), (test, test_lengths) = (
        _pad([rolls[i] for i in part], dtype) for part in parts
    )
    train_index, valid_index, test_index = (torch.from_numpy(part.astype(np.int64)) for part in parts)
    return ChoraleSplit(
        train=train,
        train_lengths=train_lengths,
        valid=valid,
        valid_lengths=valid_lengths,
        test=test,
        test_lengths=test_lengths,
        train_index=train_index,
        valid_index=valid_index,
        test_index=test_index,
        names=tuple(names),
        skipped=tuple(skipped),
        time_quantum=quantum,
    )


def _parse_corpus(
    music21: Any, time_quantum: float, limit: int | None, progress: bool
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Parse the Bach works (until ``limit`` chorales are found): ``(rolls, names, skipped)``."""
    from tqdm.auto import tqdm

    files = _chorale_files(music21)
    rolls, names, skipped, failed = [], [], [], 0
    bar = tqdm(files, desc="parsing Bach chorales", unit="work", disable=not progress)
    for path in bar:
        if limit is not None and len(rolls) >= limit:
            break
        try:
            roll = _parse_chorale(path, time_quantum)
        except Exception as error:  # music21 raises many kinds of errors on files it cannot read
            skipped.append(f"{path.name} (cannot be parsed: {type(error).__name__}: {error})")
            failed += 1
        else:
            if roll is None:
                skipped.append(f"{path.name} (not a four-voice chorale)")
            else:
                rolls.append(roll)
                names.append(path.name)
        bar.set_postfix(chorales=len(rolls), skipped=len(skipped), refresh=False)
    bar.close()
    if failed:
        failures = [entry for entry in skipped if "cannot be parsed" in entry]
        warnings.warn(
            f"load_chorales: {failed} Bach work(s) could not be parsed and were skipped: "
            + "; ".join(failures[:5])
            + (" ..." if failed > 5 else ""),
            stacklevel=3,
        )
    return rolls, names, skipped
