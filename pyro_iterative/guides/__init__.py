"""The guides: Pyro guides that infer each datapoint's q, and the protocol they share.

- :mod:`~pyro_iterative.guides.base`: :class:`LocalGuide`, the machinery every amortized guide shares (sites,
  plates, global latents, the final q, :meth:`LocalGuide.refine`, inspection, serialization);
- :mod:`~pyro_iterative.guides.iterative`: :class:`IterativeGuide`, iterative amortized inference;
- :mod:`~pyro_iterative.guides.amortized`: :class:`AmortizedGuide`, the standard one-shot encoder;
- :mod:`~pyro_iterative.guides.encoder_iterative`: :class:`EncoderIterativeGuide`, iterative inference started from an
  encoder's q;
- :mod:`~pyro_iterative.guides.semi_amortized`: :class:`SemiAmortizedGuide`, an encoder refined by gradient steps;
- :mod:`~pyro_iterative.guides.per_datapoint`: :class:`PerDatapointGuide`, variational EM with stored q;
- :mod:`~pyro_iterative.guides.optimizing`: :class:`OptimizingGuide`, q optimized at every call (variational EM's
  inference, when a model is trained with it);
- :mod:`~pyro_iterative.guides.sequential`: :class:`SequentialIterativeGuide`, iterative inference for sequence
  models, one update network shared by every time step;
- :mod:`~pyro_iterative.guides.sequence_encoder`: :class:`SequenceEncoderGuide`, the deep Markov model's inference
  network, and :class:`SequenceSemiAmortizedGuide`, its semi-amortized refinement;
- :mod:`~pyro_iterative.guides.protocol`: :class:`TrainableGuide`, what every one of them offers.

Guides import only :mod:`pyro_iterative.inference` (and each other, downwards from ``base``); training runs,
data and reports live elsewhere.
"""

from .amortized import AmortizedGuide
from .base import LocalGuide, LocalInference, Refinement
from .encoder_iterative import EncoderIterativeGuide
from .iterative import ENCODABLE, IterativeGuide
from .optimizing import OptimizingGuide
from .per_datapoint import PerDatapointGuide
from .protocol import TrainableGuide
from .semi_amortized import FINAL_CHECKS, SemiAmortizedGuide
from .sequence_encoder import SequenceEncoderGuide, SequenceSemiAmortizedGuide
from .sequential import SequentialIterativeGuide

__all__ = [
    "AmortizedGuide",
    "ENCODABLE",
    "EncoderIterativeGuide",
    "FINAL_CHECKS",
    "IterativeGuide",
    "LocalGuide",
    "LocalInference",
    "OptimizingGuide",
    "PerDatapointGuide",
    "Refinement",
    "SemiAmortizedGuide",
    "SequenceEncoderGuide",
    "SequenceSemiAmortizedGuide",
    "SequentialIterativeGuide",
    "TrainableGuide",
]
