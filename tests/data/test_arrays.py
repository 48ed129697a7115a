"""Tests of :mod:`pyro_iterative.data.arrays` (user arrays from memory or .npy / .npz files)."""

import warnings

import numpy as np
import pytest
import torch

from pyro_iterative.data import load_array


def test_load_array_ndarray_and_tensor():
    array = np.arange(12, dtype=np.float64).reshape(4, 3) / 12
    x = load_array(array)
    assert x.dtype == torch.float32 and x.shape == (4, 3)
    assert torch.allclose(x, torch.from_numpy(array).float())
    x.fill_(5)  # never shares memory with the source
    assert array.max() < 1
    tensor = torch.rand(5, 2, 3, requires_grad=True)
    y = load_array(tensor, dtype=torch.float64)
    assert y.shape == (5, 6) and y.dtype == torch.float64 and not y.requires_grad
    assert torch.equal(y, tensor.detach().double().reshape(5, 6))
    same = load_array(tensor.detach())
    same.zero_()
    assert tensor.abs().sum() > 0
    images = np.zeros((3, 1, 28, 28), dtype=np.float32)
    assert load_array(images).shape == (3, 784)
    assert load_array(np.asfortranarray(array)[::-1]).shape == (4, 3)  # non-contiguous, negative strides
    assert torch.equal(load_array(array.astype(">f8")), load_array(array))  # big-endian
    readonly = array.copy()
    readonly.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(load_array(readonly), x.new_tensor(array))


def test_load_array_integer_rules():
    grey = np.array([[0, 51, 255]], dtype=np.uint8)
    expected = torch.tensor([[0.0, 0.2, 1.0]])
    assert torch.allclose(load_array(grey), expected)
    assert torch.allclose(load_array(torch.from_numpy(grey)), expected)
    assert load_array(grey).max() == 1
    counts = np.array([[0, 3, 300], [7, 1, 2]])
    for source in (counts, counts.astype(np.int32), counts.astype(np.uint16), torch.from_numpy(counts)):
        assert torch.equal(load_array(source), torch.tensor([[0.0, 3.0, 300.0], [7.0, 1.0, 2.0]]))
    assert torch.equal(load_array(np.array([[True, False]])), torch.tensor([[1.0, 0.0]]))


def test_load_array_files(tmp_path):
    array = np.random.default_rng(0).random((6, 2, 2))
    np.save(tmp_path / "x.npy", array)
    for source in (tmp_path / "x.npy", str(tmp_path / "x.npy")):
        x = load_array(source, dtype=torch.float64)
        assert x.shape == (6, 4) and torch.equal(x, torch.from_numpy(array.reshape(6, 4)))
    np.savez(tmp_path / "one.npz", images=array)
    assert load_array(tmp_path / "one.npz").shape == (6, 4)
    assert load_array(tmp_path / "one.npz", key="images").shape == (6, 4)
    np.savez_compressed(tmp_path / "two.npz", x_train=array, x_test=np.ones((3, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"2 arrays .*x_train.*x_test.*key=") as info:
        load_array(tmp_path / "two.npz")
    assert str(tmp_path / "two.npz") in str(info.value)
    assert load_array(tmp_path / "two.npz", key="x_test").shape == (3, 5)
    with pytest.raises(ValueError, match=r"no array named 'x_val'.*x_train.*x_test"):
        load_array(tmp_path / "two.npz", key="x_val")
    np.savez(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="no arrays"):
        load_array(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="single array: drop key"):
        load_array(tmp_path / "x.npy", key="x")
    with pytest.raises(ValueError, match="does not apply"):
        load_array(array, key="x")


def test_load_array_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_array(tmp_path / "missing.npy")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"\.npy and \.npz"):
        load_array(tmp_path / "data.csv")
    np.save(tmp_path / "cut.npy", np.ones((100, 3)))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-50])
    np.savez(tmp_path / "cut.npz", x=np.ones((100, 3)))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:-50])
    np.save(tmp_path / "objects.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    for name in ("cut.npy", "cut.npz", "objects.npy"):
        with pytest.raises(ValueError, match="cannot read") as info:
            load_array(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_load_array_refuses_non_finite():
    x = np.ones((4, 3))
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    x[3, 1] = -np.inf
    for source in (x, torch.from_numpy(x)):
        with pytest.raises(ValueError, match=r"3 non-finite values .* first is nan at index \(1, 2\)"):
            load_array(source)
    with pytest.raises(ValueError, match="1 non-finite value "):
        load_array(np.array([[0.0, np.inf]], dtype=np.float16))
    with pytest.raises(ValueError, match=r"too large for torch.float32.*1e\+300.*float64"):
        load_array(np.array([[1.0, 1e300]]))
    assert load_array(np.array([[1.0, 1e300]]), dtype=torch.float64)[0, 1] == 1e300


def test_load_array_refuses_empty_and_bad_input(tmp_path):
    for empty in (np.zeros((0, 5)), np.zeros((5, 0)), np.zeros(0), torch.zeros(0, 3)):
        with pytest.raises(ValueError, match="empty"):
            load_array(empty)
    np.save(tmp_path / "empty.npy", np.zeros((0, 784), dtype=np.uint8))
    with pytest.raises(ValueError, match="empty"):
        load_array(tmp_path / "empty.npy")
    for bad in (np.array([["a", "b"]]), np.array([[1, None]], dtype=object), np.ones((2, 2), dtype=complex)):
        with pytest.raises(ValueError, match="non-numeric|complex"):
            load_array(bad)
    with pytest.raises(ValueError, match="complex"):
        load_array(torch.ones(2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"reshape it to \(n, 1\)"):
        load_array(np.ones(5))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        load_array(np.float64(3.0))
    with pytest.raises(TypeError, match="numpy array, a torch tensor"):
        load_array([[1.0, 2.0]])
    with pytest.raises(ValueError, match="dtype"):
        load_array(np.ones((2, 2)), dtype=torch.int64)
