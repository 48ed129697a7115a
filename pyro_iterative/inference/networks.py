"""Neural networks used by the guides: an ELU multilayer perceptron, a highway layer and the gated update of the paper.

These are plain ``torch.nn.Module`` s (not ``PyroModule`` s): a guide holds them as attributes and
Pyro registers their parameters through ``pyro.module`` when the guide reads the attribute. What
the networks are fed (gradient and data encodings) is decided by the guides, not here.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "DEFAULT_GATE_BIAS",
    "DEFAULT_HIDDEN_LAYERS",
    "GatedUpdate",
    "Highway",
    "auto_width",
    "mlp",
    "shrink_output",
]

#: hidden layers of a guide's networks when the user gives no ``hidden_sizes`` (the paper's networks have two)
DEFAULT_HIDDEN_LAYERS = 2

#: IterativeGuide's default initial bias of its update networks' gates: ``sigmoid(2)`` is about 0.88, so an untrained
#: update moves lambda an eighth of the way towards its (random) proposal; measured on the model zoo
#: (``docs/defaults.md``). ``GatedUpdate`` itself and the other iterative guides start as PyTorch does.
DEFAULT_GATE_BIAS = 2.0


def auto_width(features: int, smallest: int = 32, largest: int = 512) -> int:
    """The hidden width a guide uses when none is given: the power of two at or above ``4 * features`` (what a network
    reads and writes per datapoint), clamped to ``[smallest, largest]``. The paper's MNIST networks (784 pixels)
    get 512; a model with 7 observed values and 3 latents gets 64.

    Usage::

        auto_width(784 + 2 * 64)   # 512
        auto_width(7 + 2 * 3)      # 64
    """
    if features < 1:
        raise ValueError(f"features must be positive, got {features}.")
    return min(largest, max(smallest, 1 << math.ceil(math.log2(4 * features))))


def shrink_output(layer: nn.Linear, bias: torch.Tensor | float = 0.0, scale: float = 0.0) -> nn.Linear:
    """Scale an output layer's initial weights by ``scale`` (default 0) and set its bias, so that a new network's
    output starts at (near) ``bias`` whatever its input: an untrained guide then leaves q at lambda_0. The weights
    still receive gradients (the hidden layers are random), so training is not slowed by symmetry. Returns the layer.

    Usage::

        head = shrink_output(nn.Linear(64, 4), bias=torch.tensor([0.0, 0.0, 0.0, 0.0]))
    """
    with torch.no_grad():
        layer.weight.mul_(scale)
        layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype).expand_as(layer.bias))
    return layer


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


class Highway(nn.Module):
    """A highway layer of one width (Srivastava, Greff & Schmidhuber, 2015): ``y = t * ELU(W x + b) + (1 - t) * x``
    with the transform gate ``t = sigmoid(W_t x + b_t)``.

    The gate's bias starts at ``gate_bias`` (default -1, ``t`` about 0.27), so that a new layer mostly carries its
    input through, as Srivastava et al. recommend for deep stacks; the paper's reference code used such layers in its
    update networks (:class:`GatedUpdate` with ``highway=True``). Parameters: ``transform.weight``,
    ``transform.bias``, ``gate.weight``, ``gate.bias``, ``2 * (width ** 2 + width)`` in all.

    Usage::

        layer = Highway(64)
        y = layer(x)   # x: (batch, 64), y: (batch, 64)

    :param width: the width of the layer's input and output.
    :param gate_bias: initial bias of the transform gate (negative: start near carrying the input).
    """

    def __init__(self, width: int, gate_bias: float = -1.0) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"a highway layer's width must be positive, got {width}.")
        self.transform = nn.Linear(width, width)
        self.gate = nn.Linear(width, width)
        with torch.no_grad():
            self.gate.bias.fill_(gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(x))
        # ELU in place on the transform's output, which no backward pass reads (the Linear's reads its input)
        return gate * nn.functional.elu(self.transform(x), inplace=True) + (1 - gate) * x


class GatedUpdate(nn.Module):
    """The gated update of iterative amortized inference: ``lambda' = g * lambda + (1 - g) * delta``.

    An ELU MLP reads the encoded inputs; two linear heads give the gate ``g`` (through a sigmoid) and
    the proposal ``delta``, each the width of ``lambda``. With ``constant_features``, the first layer also
    reads an input that stays the same at every iteration of a call (the datapoint's observed values):
    its projection is computed once per call by :meth:`project` and added at each iteration, the same
    function as one wider first layer over both inputs, at a fraction of the arithmetic.

    Usage::

        update = GatedUpdate(in_features=20, out_features=4)
        new_lam = update(inputs, lam)  # inputs: (batch, 20), lam: (batch, 4)

        update = GatedUpdate(in_features=12, out_features=4, constant_features=784)
        projected = update.project(x)                 # once per call, x: (batch, 784)
        new_lam = update(inputs, lam, projected)      # at every iteration, inputs: (batch, 12)

    :param in_features: width of the encoded input that changes from one iteration to the next.
    :param out_features: width of ``lambda`` (location and log-scale of every coordinate).
    :param hidden_sizes: widths of the hidden ELU layers.
    :param constant_features: width of the constant input (0: none).
    :param gate_bias: the gate's initial bias, the proposal's bias then starting at zero (the heads' weights keep
        PyTorch's initialisation): at +2 (``g`` about 0.88) an untrained update is a small step towards a random
        proposal. ``None``: PyTorch's initialisation of both biases (``g`` about 0.5), as in the paper's code.
    :param small_init: start as an even smaller step: both heads' weights zero, the proposal's bias zero and the
        gate's bias at ``gate_bias`` (+2 where that is ``None``), so that an untrained update only shrinks lambda
        towards 0 (lambda_0 of a standard-normal q stays where it is; ``False``: the heads' weights as PyTorch
        initialises them).
    :param highway: the hidden-to-hidden layers are :class:`Highway` layers (as in the paper's reference code)
        instead of Linear + ELU: ``hidden_sizes`` must then be two or more equal widths, e.g. ``(512, 512)``, and each
        such layer has ``width ** 2 + width`` more parameters (its transform gate). ``False`` builds the same layers,
        with the same parameter names, as before the option existed.
    :param normalize_hidden: standardise the first layer's pre-activations and the last hidden layer's outputs per
        datapoint (layer normalisation without parameters; no datapoint depends on its batch-mates), so that what
        the gate and the proposal read stays of unit scale however large the inputs (log-magnitudes of gradients,
        raw counts) and so that the gate cannot saturate for lack of it. No parameters are added.
    """

    def __init__(
        self, in_features: int, out_features: int, hidden_sizes: Sequence[int] = (512, 512), constant_features: int = 0,
        *, gate_bias: float | None = None, small_init: bool = False, highway: bool = False,
        normalize_hidden: bool = False,
    ) -> None:
        super().__init__()
        self.normalize_hidden = bool(normalize_hidden)
        hidden_sizes = tuple(hidden_sizes)
        if not hidden_sizes or min(hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be one or more positive widths, e.g. (512, 512), got {hidden_sizes}.")
        if highway and (len(hidden_sizes) < 2 or len(set(hidden_sizes)) > 1):
            raise ValueError(
                f"highway=True makes the hidden-to-hidden layers highway layers, which keep their width: pass two or "
                f"more equal widths, e.g. hidden_sizes=(512, 512), or highway=False; got hidden_sizes={hidden_sizes}."
            )
        self.input = nn.Linear(in_features, hidden_sizes[0])
        self.constant = nn.Linear(constant_features, hidden_sizes[0], bias=False) if constant_features else None
        # ELUs in place: their backward pass reads their outputs, so the pre-activations are not kept alive
        # (the update networks' activations are what training memory grows with, once per iteration).
        layers: list[nn.Module] = [nn.ELU(inplace=True)]
        for width_in, width_out in zip(hidden_sizes, hidden_sizes[1:]):
            layers += [Highway(width_in)] if highway else [nn.Linear(width_in, width_out), nn.ELU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.gate = nn.Linear(hidden_sizes[-1], out_features)
        self.delta = nn.Linear(hidden_sizes[-1], out_features)
        if small_init:
            shrink_output(self.gate, bias=DEFAULT_GATE_BIAS if gate_bias is None else gate_bias)
            shrink_output(self.delta, bias=0.0)
        elif gate_bias is not None:  # the biases only: the weights stay as PyTorch initialised them
            nn.init.constant_(self.gate.bias, gate_bias)
            nn.init.zeros_(self.delta.bias)

    def project(self, constant: torch.Tensor) -> torch.Tensor:
        """The first layer's share of the constant input, ``(batch, hidden_sizes[0])``: pass it to every call."""
        if self.constant is None:
            raise ValueError("This update network was built without constant_features; it has nothing to project.")
        return self.constant(constant)

    def forward(self, inputs: torch.Tensor, lam: torch.Tensor, projected: torch.Tensor | None = None) -> torch.Tensor:
        first = self.input(inputs)
        if self.constant is not None:
            if projected is None:
                raise ValueError("This update network reads a constant input: pass projected=net.project(constant).")
            first = first + projected
        if self.normalize_hidden:
            first = F.layer_norm(first, first.shape[-1:])
        hidden = self.body(first)
        if self.normalize_hidden:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        gate = torch.sigmoid(self.gate(hidden))
        return gate * lam + (1 - gate) * self.delta(hidden)
