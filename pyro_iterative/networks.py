"""Neural networks used by the guides: an ELU multilayer perceptron and the gated update of the paper.

These are plain ``torch.nn.Module`` s (not ``PyroModule`` s): a guide holds them as attributes and
Pyro registers their parameters through ``pyro.module`` when the guide reads the attribute. What
the networks are fed (gradient and data encodings) is decided by the guides, not here.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = [
    "GatedUpdate",
    "mlp",
]


def mlp(in_features: int, hidden_sizes: Sequence[int], out_features: int | None = None) -> nn.Sequential:
    """Linear + ELU layers of the given widths, then, with ``out_features``, a final Linear layer.

    The paper's networks use two hidden layers of 512 units. With ``out_features``, ``hidden_sizes`` may be
    empty (a linear map); the layers are flat, so parameters are named ``0.weight``, ``0.bias``, ...

    Usage::

        body = mlp(784, (512, 512))            # maps (batch, 784) to (batch, 512)
        decoder = mlp(64, (512, 512), 784)     # maps (batch, 64) to (batch, 784) logits
    """
    hidden_sizes = tuple(hidden_sizes)
    if not hidden_sizes and out_features is None:
        raise ValueError("hidden_sizes must name at least one layer width, e.g. (512, 512).")
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        if width < 1:
            raise ValueError(f"hidden layer widths must be positive, got {hidden_sizes}.")
        layers += [nn.Linear(in_features, width), nn.ELU()]
        in_features = width
    if out_features is not None:
        layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


class GatedUpdate(nn.Module):
    """The gated update of iterative amortized inference: ``lambda' = g * lambda + (1 - g) * delta``.

    An ELU MLP reads the encoded inputs; two linear heads give the gate ``g`` (through a sigmoid) and
    the proposal ``delta``, each the width of ``lambda``.

    Usage::

        update = GatedUpdate(in_features=20, out_features=4)
        new_lam = update(inputs, lam)  # inputs: (batch, 20), lam: (batch, 4)

    :param in_features: width of the encoded input.
    :param out_features: width of ``lambda`` (location and log-scale of every coordinate).
    :param hidden_sizes: widths of the hidden ELU layers.
    """

    def __init__(self, in_features: int, out_features: int, hidden_sizes: Sequence[int] = (512, 512)) -> None:
        super().__init__()
        self.body = mlp(in_features, hidden_sizes)
        self.gate = nn.Linear(hidden_sizes[-1], out_features)
        self.delta = nn.Linear(hidden_sizes[-1], out_features)

    def forward(self, inputs: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        hidden = self.body(inputs)
        gate = torch.sigmoid(self.gate(hidden))
        return gate * lam + (1 - gate) * self.delta(hidden)
