"""Tests of :mod:`pyro_iterative.data.binarization` (dynamic and static binarization)."""

import pytest
import torch

from pyro_iterative.data import BINARIZE_MODES, binarize, static_binarize


@pytest.fixture
def grey():
    """Grey-level 'images' with some pixels exactly 0 and 1, like MNIST."""
    # Not seed 0: static_binarize(x, seed=0) would reuse the very uniforms that made x (see its docstring).
    x = torch.rand(50, 784, generator=torch.Generator().manual_seed(123))
    x[:, :100] = 0.0
    x[:, 100:150] = 1.0
    return x


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


def test_binarize_modes():
    assert BINARIZE_MODES == ("dynamic", "static", "none")
