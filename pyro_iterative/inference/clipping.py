"""Per-datapoint clipping of the training gradient that reaches an inference network: :class:`RunningMedianClip`.

An encoder is trained through its output lambda, one row per datapoint. Where the ELBO's gradients there grow far
above their usual size (narrow posteriors under a steep likelihood, such as counts in the hundreds: a few rows, or
whole batches once training starts to oscillate), Adam's normalised steps can move every weight the same way at once
and the encoder's outputs swing: the loss spikes by factors of thousands. This module holds a clip that bounds each
row's gradient by a multiple of its recent typical size, which needs no scale from the user. Which networks use it
is the guides' business; nothing here changes a forward pass.
"""

from __future__ import annotations

import statistics
from collections import deque

import torch
from torch import nn

__all__ = [
    "RunningMedianClip",
]


class RunningMedianClip(nn.Module):
    """In the backward pass, scale each datapoint's gradient with respect to a network's output down to at most
    ``factor`` times a running median: the median, over the last ``window`` backward passes, of each pass's median
    per-datapoint gradient norm (the first pass uses its own). Rows below the bound, and non-finite rows, are left as
    they are, and so is every row while that median is 0; the forward pass is the identity. The recent medians are
    part of the ``state_dict`` (a module's extra state), so that a checkpointed run resumes exactly where it stopped.
    Under data-parallel training each process measures its own shard (and a resumed run restores the saving
    process's medians everywhere).

    The bound follows the model's own gradient scale, so it needs no tuning per model. It changes only what the network
    learns from (a datapoint's inference never depends on its batch-mates): a row far above its batch's typical size
    still pushes the network its way, by at most ``factor`` typical rows.

    Usage::

        clip = RunningMedianClip(factor=3.0)
        lam = clip(encoder(x))          # (batch, width); under torch.no_grad() nothing is registered
        loss(lam).backward()            # rows of d loss / d lam above 3 x the running median are scaled down

    :param float factor: the bound, in running medians (> 0).
    :param int window: the backward passes the median runs over.
    """

    def __init__(self, factor: float = 3.0, window: int = 50) -> None:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            raise ValueError(f"factor must be a number > 0 (running medians), got {factor!r}.")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}.")
        super().__init__()
        self.factor = float(factor)
        self.history: deque[float] = deque(maxlen=window)

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        """``output`` itself, with the clip registered on its gradient where it has one."""
        if output.requires_grad:
            output.register_hook(self._clip)
        return output

    def get_extra_state(self) -> dict:
        return {"history": list(self.history)}

    def set_extra_state(self, state: dict) -> None:
        self.history.clear()
        self.history.extend(state["history"])

    def _clip(self, grad: torch.Tensor) -> torch.Tensor:
        norm = grad.norm(dim=-1, keepdim=True)
        finite = torch.isfinite(norm)
        if not finite.any():
            return grad
        current = float(norm[finite].median())
        limit = self.factor * (statistics.median(self.history) if self.history else current)
        self.history.append(current)
        if not limit > 0:  # most rows have no gradient: nothing to measure the others against
            return grad
        scale = (limit / norm).clamp(max=1.0)
        return torch.where(finite, grad * scale, grad)
