"""RunningMedianClip: each row's gradient bounded by a multiple of the running median of batch medians."""

import pytest
import torch

from pyro_iterative.inference.clipping import RunningMedianClip


def _backward(clip: RunningMedianClip, grad: torch.Tensor) -> torch.Tensor:
    """The gradient that reaches a leaf through ``clip`` when ``grad`` arrives at its output."""
    leaf = torch.zeros_like(grad, requires_grad=True)
    out = clip(leaf * 1.0)
    out.backward(grad)
    return leaf.grad


def _rows(*norms: float) -> torch.Tensor:
    """``(len(norms), 2)`` rows with these norms."""
    return torch.tensor([[0.6 * n, 0.8 * n] for n in norms], dtype=torch.float64)


def test_rows_above_the_bound_are_scaled_to_it_and_the_others_kept():
    clip = RunningMedianClip(factor=3.0)
    got = _backward(clip, _rows(1.0, 2.0, 2.0, 100.0))  # first pass: its own median, 2
    assert torch.allclose(got.norm(dim=-1), torch.tensor([1.0, 2.0, 2.0, 6.0], dtype=torch.float64))
    assert torch.allclose(got[3] / got[3].norm(), torch.tensor([0.6, 0.8], dtype=torch.float64))  # direction kept
    assert list(clip.history) == [2.0]
    # the next pass is bounded by the running median of the passes before it, not by its own
    got = _backward(clip, _rows(50.0, 50.0, 50.0))
    assert torch.allclose(got.norm(dim=-1), torch.full((3,), 6.0, dtype=torch.float64))
    assert list(clip.history) == [2.0, 50.0]


def test_the_median_runs_over_the_last_window_passes():
    clip = RunningMedianClip(factor=1.0, window=2)
    for norm in (1.0, 10.0, 20.0):
        _backward(clip, _rows(norm))
    assert list(clip.history) == [10.0, 20.0]
    assert torch.allclose(_backward(clip, _rows(100.0)).norm(), torch.tensor(15.0, dtype=torch.float64))


def test_non_finite_rows_and_zero_medians_are_left_alone():
    clip = RunningMedianClip(factor=3.0)
    grad = _rows(1.0, 1.0, 50.0)
    grad[0, 0] = float("nan")
    got = _backward(clip, grad)
    assert torch.isnan(got[0, 0]) and torch.allclose(got[2].norm(), torch.tensor(3.0, dtype=torch.float64))
    zero = RunningMedianClip(factor=3.0)
    assert torch.equal(_backward(zero, _rows(0.0, 0.0, 5.0)), _rows(0.0, 0.0, 5.0))


def test_the_forward_pass_is_the_identity_and_nothing_is_registered_without_gradients():
    clip = RunningMedianClip()
    x = torch.randn(4, 3)
    assert clip(x) is x
    with torch.no_grad():
        y = torch.randn(4, 3, requires_grad=True) * 2
    assert clip(y) is y and not clip.history


@pytest.mark.parametrize("kwargs", [{"factor": 0.0}, {"factor": -1.0}, {"factor": True}, {"window": 0},
                                    {"window": 2.5}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="factor|window"):
        RunningMedianClip(**kwargs)
