"""User arrays: data sets from numpy arrays, torch tensors or ``.npy`` / ``.npz`` files, one datapoint per row.

This module holds :func:`load_array`, which checks and converts user data to a ``(n, features)`` floating point tensor
(grey levels to ``[0, 1]``, integer counts kept as counts, NaN and infinite values refused). It does not hold the MNIST
loaders (:mod:`pyro_iterative.data.mnist`), the check that data are word counts (:mod:`pyro_iterative.data.corpora`)
or the binarization (:mod:`pyro_iterative.data.binarization`).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_array"]

_ARRAY_SUFFIXES = (".npy", ".npz")
_INTEGER_DTYPES = {torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8} | {
    getattr(torch, name)
    for name in ("uint16", "uint32", "uint64")
    if hasattr(torch, name)  # torch >= 2.3
}


def _read_array_file(path: Path, key: str | None) -> np.ndarray:
    if path.suffix not in _ARRAY_SUFFIXES:
        raise ValueError(
            f"cannot read {path}: load_array reads .npy and .npz files (save yours with numpy.save or numpy.savez), "
            "or pass the array itself"
        )
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"data file {path} {what}")
    unreadable = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        loaded = np.load(path, allow_pickle=False)  # picks .npy or .npz by content, not by suffix
    except unreadable as error:
        raise ValueError(f"cannot read {path} as a numeric array: {type(error).__name__}: {error}") from error
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise ValueError(
                f"key={key!r} selects an array inside a .npz archive, but {path} holds a single array: drop key"
            )
        return loaded
    with loaded:
        keys = list(loaded.files)
        if key is None:
            if len(keys) != 1:
                found = f"{len(keys)} arrays {keys}" if keys else "no arrays"
                raise ValueError(f"{path} holds {found}; choose one with key=..." if keys else f"{path} holds {found}")
            key = keys[0]
        elif key not in keys:
            raise ValueError(f"{path} has no array named {key!r}; its arrays are {keys}")
        try:
            return loaded[key]
        except unreadable as error:
            raise ValueError(f"cannot read array {key!r} of {path}: {type(error).__name__}: {error}") from error


def _numpy_to_tensor(array: np.ndarray, name: str) -> Tensor:
    """A tensor of the array's values; bool and uint8 keep their dtype, other integers become float64 counts."""
    kind = array.dtype.kind
    if kind not in "biuf":
        what = "complex" if kind == "c" else "non-numeric"
        raise ValueError(
            f"{name} has {what} dtype {array.dtype}; load_array needs real numbers (bool, integer or float): "
            "convert it first, e.g. numpy.asarray(x, dtype=numpy.float32)"
        )
    if (kind in "iu" and array.dtype != np.uint8) or (kind == "f" and array.dtype.itemsize > 8):
        array = array.astype(np.float64)  # counts (exact below 2**53) and long doubles
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    if not array.flags.writeable:
        array = array.copy()  # torch.from_numpy warns about read-only arrays
    return torch.from_numpy(array)


def _check_finite(x: Tensor, name: str, problem: str, fix: str, source: Tensor | None = None) -> None:
    """Raise if ``x`` has NaN or inf: how many, the first one (value read from ``source`` if given) and ``fix``."""
    bad = ~torch.isfinite(x)
    count = int(bad.sum())
    if count:
        first = int(bad.reshape(-1).to(torch.uint8).argmax())
        index = tuple(int(i) for i in np.unravel_index(first, tuple(x.shape)))
        value = (x if source is None else source).reshape(-1)[first].item()
        values = "value" if count == 1 else "values"
        raise ValueError(
            f"{name} has {count} {problem.format(values=values)} out of {x.numel()}; the first is {value} at index "
            f"{index} (row {index[0]}): {fix}"
        )


def load_array(
    source: np.ndarray | Tensor | str | os.PathLike, *, key: str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """
    Load user data as a ``(n, features)`` floating point tensor, one datapoint per row, from an array in memory or a
    ``.npy`` / ``.npz`` file (read without pickle). Trailing dimensions are flattened: ``n`` images of ``28 x 28`` give
    ``(n, 784)``.

    Values are converted by dtype:

    * ``uint8``: taken as 8-bit grey levels and divided by 255, giving values in ``[0, 1]`` ready for
      :func:`~pyro_iterative.data.binarization.binarize` (convert counts stored as ``uint8`` to a wider integer type
      first to keep them as they are);
    * other integers (signed, or unsigned wider than 8 bits): taken as counts and converted to float unchanged
      (exact up to ``2**24`` in ``float32``);
    * ``bool``: 0 and 1;
    * floating point: converted to ``dtype``.

    The result never shares memory with ``source``; a tensor ``source`` keeps its device.

    Usage::

        x = load_array(np.random.rand(100, 8))                 # (100, 8), float32
        x = load_array("images.npy")                           # uint8 (n, 28, 28) -> (n, 784) in [0, 1]
        x = load_array("data.npz", key="x_train")              # one array of an archive
        x = load_array(torch.randint(0, 5, (50, 3)), dtype=torch.float64)   # counts, kept as counts

    :param source: a :class:`numpy.ndarray`, a :class:`torch.Tensor`, or the path of a ``.npy`` or ``.npz`` file.
    :param str key: name of the array inside a ``.npz`` archive; may be left out when the archive holds exactly one.
    :param torch.dtype dtype: floating point dtype of the result.
    :return: tensor of shape ``(n, features)``.
    :raises FileNotFoundError: if the file does not exist.
    :raises TypeError: if ``source`` is of another type.
    :raises ValueError: if the data are empty, not numeric (object, string, complex...), 0-d or 1-d (reshape them to
        ``(n, 1)`` or ``(1, n)``), contain NaN or infinite values (the message says how many and where the first is),
        overflow ``dtype``, or if the file is not a readable ``.npy`` / ``.npz`` file or ``key`` is wrong.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point torch dtype, got {dtype}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        name = str(path)
        tensor = _numpy_to_tensor(_read_array_file(path, key), name)
    elif isinstance(source, (np.ndarray, np.generic, Tensor)):
        name = "the tensor" if isinstance(source, Tensor) else "the array"
        if key is not None:
            raise ValueError(f"key={key!r} selects an array inside a .npz file; it does not apply to {name}: drop key")
        tensor = source.detach() if isinstance(source, Tensor) else _numpy_to_tensor(np.asarray(source), name)
    else:
        raise TypeError(
            f"load_array takes a numpy array, a torch tensor or the path of a .npy/.npz file, got "
            f"{type(source).__name__}: convert it with numpy.asarray first"
        )

    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype == torch.bool or _is_integer(tensor)):
        what = "complex" if tensor.is_complex() else "non-numeric"
        raise ValueError(
            f"{name} has {what} dtype {tensor.dtype}; load_array needs real numbers (bool, integer or float): "
            "convert it first"
        )
    shape = tuple(tensor.shape)
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty (shape {shape}): pass at least one datapoint with at least one feature")
    if tensor.dim() < 2:
        fix = (
            f"reshape it to (n, 1) for {shape[0]} datapoints with one feature each, or to (1, n) for one datapoint"
            if tensor.dim() == 1
            else "pass an array of shape (n, features) or (n, ...)"
        )
        raise ValueError(f"{name} has shape {shape}, but rows are datapoints and need at least 2 dimensions: {fix}")
    if tensor.is_floating_point():
        _check_finite(tensor, name, "non-finite {values} (NaN or inf)", "remove or impute them before loading")
        result = tensor.to(dtype=dtype, copy=True)
    elif tensor.dtype == torch.uint8:
        result = tensor.to(dtype).div_(255)
    else:
        result = tensor.to(dtype, copy=True)
    _check_finite(
        result,
        name,
        f"{{values}} too large for {dtype}",
        "they would become inf: pass dtype=torch.float64 or rescale the data",
        source=tensor,
    )
    return result.reshape(shape[0], -1)


def _is_integer(tensor: Tensor) -> bool:
    return tensor.dtype in _INTEGER_DTYPES
