"""Fair comparisons: parameter counts of inference networks, and guides sized to match another guide.

The review of the paper asked whether iterative inference wins because it is better or because it is
bigger. Methods compared in one table should have inference networks within 5% in parameter count;
this module counts them and builds a matching :class:`~pyro_iterative.guides.amortized.AmortizedGuide` (or, for
sequence models, :class:`~pyro_iterative.guides.sequence_encoder.SequenceEncoderGuide`), or a matching
:class:`~pyro_iterative.guides.iterative.IterativeGuide` or
:class:`~pyro_iterative.guides.encoder_iterative.EncoderIterativeGuide` (to compare variants of iterative inference:
highway update networks, an encoder's starting point). The cost in model passes is reported by each guide's
``inference_cost()``.
"""

from __future__ import annotations

from typing import Callable

import torch

from .guides.amortized import AmortizedGuide
from .guides.encoder_iterative import EncoderIterativeGuide
from .guides.iterative import IterativeGuide
from .guides.protocol import TrainableGuide
from .guides.sequence_encoder import SequenceEncoderGuide
from .guides.sequential import SequentialIterativeGuide
from .inference.networks import DEFAULT_HIDDEN_LAYERS
from .inference.time_steps import step_of

__all__ = [
    "inference_parameters",
    "matched_amortized_guide",
    "matched_iterative_guide",
    "matched_sequence_encoder",
]


def _closest(count: Callable[[int], int], target: int) -> int:
    """The positive integer whose ``count`` (increasing) is closest to ``target``, by doubling then bisection."""
    low, high = 1, 1
    while count(high) < target:
        high *= 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) < target else (low, middle)
    return min((low, high), key=lambda w: abs(count(w) - target))


def inference_parameters(guide: TrainableGuide) -> int:
    """Number of parameters a guide spends on inference: its networks' (for variational EM, its stored q's),
    its global sites' AutoNormal excluded. The guide must have been set up.

    Usage::

        inference_parameters(IterativeGuide(model).setup(x))
    """
    return guide.count_inference_parameters()


def matched_amortized_guide(
    model: Callable,
    reference: IterativeGuide | AmortizedGuide,
    *args,
    tolerance: float = 0.05,
    num_layers: int | None = None,
    guide_options: dict | None = None,
    **kwargs,
) -> AmortizedGuide:
    """An :class:`AmortizedGuide` with as many encoder parameters as ``reference``'s networks, within ``tolerance``.

    The encoder keeps ``num_layers`` hidden layers (by default as many as the reference's
    ``hidden_sizes``) of one common width, chosen by bisection. ``args`` and ``kwargs`` are the model's
    arguments (a small batch suffices); ``guide_options`` go to ``AmortizedGuide``.

    Usage::

        iterative = IterativeGuide(model, num_iterations=5).setup(x[:2])
        standard = matched_amortized_guide(model, iterative, x[:2])
        inference_parameters(standard) / inference_parameters(iterative)   # within 1 +- 0.05

    :raises ValueError: when no width lands within ``tolerance``.
    """
    if num_layers is None and not isinstance(reference, (IterativeGuide, AmortizedGuide)):
        raise TypeError(
            f"matched_amortized_guide reads the number of hidden layers from an IterativeGuide or AmortizedGuide; "
            f"for a {type(reference).__name__} pass num_layers=..."
        )
    reference.setup(*args, **kwargs)
    target = inference_parameters(reference)
    options = dict(guide_options or {})
    layers = num_layers or (len(reference.hidden_sizes) if reference.hidden_sizes else DEFAULT_HIDDEN_LAYERS)

    def count(width: int) -> int:
        # The networks alone, for the reference's layout: the model need not run again.
        return sum(p.numel() for p in AmortizedGuide.build_encoder(reference.layout, (width,) * layers).parameters())

    width = _closest(count, target)
    achieved = count(width)
    if abs(achieved - target) > tolerance * target:
        raise ValueError(
            f"No encoder of {layers} hidden layers has {target} parameters within {tolerance:.0%}: the closest, width "
            f"{width}, has {achieved}. Change num_layers."
        )
    return AmortizedGuide(model, hidden_sizes=(width,) * layers, **options).setup(*args, **kwargs)


def matched_iterative_guide(
    model: Callable,
    reference: TrainableGuide,
    *args,
    guide_class: type[IterativeGuide] = IterativeGuide,
    guide_options: dict | None = None,
    num_layers: int | None = None,
    tolerance: float = 0.05,
    **kwargs,
) -> IterativeGuide:
    """A ``guide_class`` guide (:class:`~pyro_iterative.guides.iterative.IterativeGuide` or
    :class:`~pyro_iterative.guides.encoder_iterative.EncoderIterativeGuide`) with as many inference parameters as
    ``reference``'s networks, within ``tolerance``.

    All its networks get ``num_layers`` hidden layers (by default as many as the reference's ``hidden_sizes``) of
    one common width, chosen by bisection: the update networks' ``hidden_sizes`` and, for an EncoderIterativeGuide,
    the encoder's ``encoder_hidden_sizes``. ``args`` and ``kwargs`` are the model's arguments (a small batch
    suffices): a probe guide is set up on them to find the model's sites, the candidate networks are then counted
    without running the model, and the guide returned has been set up. ``guide_options`` go to ``guide_class`` (any
    but the widths). The probe and the candidates are built under a forked (CPU) torch RNG: the guide returned is
    initialised as if it had been built directly.

    Usage::

        reference = IterativeGuide(model, hidden_sizes=(512, 512))
        highway = matched_iterative_guide(model, reference, x[:2], guide_options={"highway": True})
        started = matched_iterative_guide(model, reference, x[:2], guide_class=EncoderIterativeGuide,
                                          guide_options={"observe": lambda idx, x, **kw: x[idx]})
        inference_parameters(started) / inference_parameters(reference)   # within 1 +- 0.05

    :raises TypeError: for a ``guide_class`` that is not IterativeGuide or EncoderIterativeGuide (or a subclass), and
        for a reference that is neither an IterativeGuide nor an AmortizedGuide without ``num_layers``.
    :raises ValueError: when no width lands within ``tolerance`` (naming the closest count), or when
        ``guide_options`` names the widths this function chooses.
    """
    if not (isinstance(guide_class, type) and issubclass(guide_class, IterativeGuide)) or issubclass(
        guide_class, SequentialIterativeGuide
    ):
        raise TypeError(
            f"matched_iterative_guide builds an IterativeGuide or EncoderIterativeGuide, got "
            f"guide_class={guide_class!r}; for sequence models match an encoder with matched_sequence_encoder."
        )
    if num_layers is None and not isinstance(reference, (IterativeGuide, AmortizedGuide)):
        raise TypeError(
            f"matched_iterative_guide reads the number of hidden layers from an IterativeGuide or AmortizedGuide; "
            f"for a {type(reference).__name__} pass num_layers=..."
        )
    options = dict(guide_options or {})
    chosen = sorted({"hidden_sizes", "encoder_hidden_sizes"} & set(options))
    if chosen:
        raise ValueError(
            f"guide_options sets {chosen}, the widths matched_iterative_guide chooses; leave them out (num_layers= "
            "sets the number of hidden layers)."
        )
    reference.setup(*args, **kwargs)
    target = inference_parameters(reference)
    layers = num_layers or (len(reference.hidden_sizes) if reference.hidden_sizes else DEFAULT_HIDDEN_LAYERS)
    if options.get("highway") and layers < 2:
        raise ValueError(
            f"highway update networks need two or more hidden layers (their hidden-to-hidden layers are the highway "
            f"layers), got num_layers={layers}; pass num_layers=2 or more."
        )
    encoded = issubclass(guide_class, EncoderIterativeGuide)
    with torch.random.fork_rng(devices=[]):
        probe = guide_class(model, **options).setup(*args, **kwargs)  # finds the sites; its own networks are unused

        def count(width: int) -> int:
            # The networks alone, for the probe's layout: the model need not run again.
            networks = [probe.build_update_networks(probe.layout, (width,) * layers)]
            if encoded:
                networks.append(probe.build_encoder(probe.layout, (width,) * layers))
            return sum(p.numel() for network in networks for p in network.parameters())

        width = _closest(count, target)
    widths = {"hidden_sizes": (width,) * layers}
    if encoded:
        widths["encoder_hidden_sizes"] = (width,) * layers
    guide = guide_class(model, **widths, **options).setup(*args, **kwargs)
    achieved = inference_parameters(guide)
    if abs(achieved - target) > tolerance * target:
        raise ValueError(
            f"No {guide_class.__name__} of {layers} hidden layers per network has {target} parameters within "
            f"{tolerance:.0%}: the closest, width {width}, has {achieved}. Change num_layers or the reference."
        )
    return guide


def matched_sequence_encoder(
    model: Callable, reference: TrainableGuide, *args, tolerance: float = 0.05, guide_options: dict | None = None,
    **kwargs,
) -> SequenceEncoderGuide:
    """A :class:`~pyro_iterative.guides.sequence_encoder.SequenceEncoderGuide` whose GRU and combiner have as many
    parameters as ``reference``'s networks, within ``tolerance``: its ``rnn_dim`` is chosen by bisection. ``args`` and
    ``kwargs`` are the model's arguments; ``guide_options`` go to the guide.

    Usage::

        iterative = SequentialIterativeGuide(dmm, hidden_sizes=(200, 200)).setup(x, lengths)
        encoder = matched_sequence_encoder(dmm, iterative, x, lengths)
        inference_parameters(encoder) / inference_parameters(iterative)   # within 1 +- 0.05

    :raises ValueError: when no ``rnn_dim`` lands within ``tolerance``.
    """
    reference.setup(*args, **kwargs)
    target = inference_parameters(reference)
    options = dict(guide_options or {})
    time = SequenceEncoderGuide.shared_time_layout(reference.layout, options.get("step", step_of))
    width = _closest(lambda r: SequenceEncoderGuide.encoder_parameters(time, r), target)
    achieved = SequenceEncoderGuide.encoder_parameters(time, width)
    if abs(achieved - target) > tolerance * target:
        raise ValueError(
            f"No sequence encoder has {target} parameters within {tolerance:.0%}: the closest, rnn_dim {width}, has "
            f"{achieved}."
        )
    return SequenceEncoderGuide(model, rnn_dim=width, **options).setup(*args, **kwargs)
