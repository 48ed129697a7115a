"""What inference costs: :class:`ModelPasses`, the passes through the model (decoder) per datapoint.

Every guide reports its cost in these units (``inference_cost()``), and every evaluation result carries
the passes it spent, so that a better ELBO is always read beside what it cost.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ModelPasses",
]


@dataclass(frozen=True)
class ModelPasses:
    """Passes through the model (decoder) per datapoint that a method spends to produce its q.

    Usage::

        guide.inference_cost()          # ModelPasses(forward=5, backward=5) for 5 iterations
        guide.inference_cost().total    # 10
    """

    forward: int
    backward: int

    @property
    def total(self) -> int:
        """Forward plus backward passes."""
        return self.forward + self.backward
