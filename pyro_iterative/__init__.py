"""pyro-iterative: iterative amortized inference (Marino, Yue & Mandt, ICML 2018) for Pyro.

Guides (all Pyro guides, usable with SVI and Predictive): :class:`IterativeGuide` (learned iterative
refinement), :class:`EncoderIterativeGuide` (learned refinement of an encoder's q), :class:`AmortizedGuide` (the
standard encoder), :class:`SemiAmortizedGuide` (encoder plus gradient steps), :class:`PerDatapointGuide`
(variational EM with stored q), :class:`OptimizingGuide` (q optimized at every call); for sequence models
(``pyro.markov`` loops, one site per step) :class:`SequentialIterativeGuide` (one update network shared by every
step), :class:`SequenceEncoderGuide` (the deep Markov model's inference network) and
:class:`SequenceSemiAmortizedGuide`. :func:`optimize_local` optimizes q for a batch with a torch optimizer. The
package is layered: :mod:`pyro_iterative.inference` (the machinery),
:mod:`pyro_iterative.guides`, then evaluation, optimization and matching, :mod:`pyro_iterative.data`, and
:mod:`pyro_iterative.experiments` (training runs, the comparison, its report; data-parallel training with
PyTorch Lightning in :mod:`pyro_iterative.experiments.lightning`, which needs the ``distributed`` extra and is
not imported here).

Usage::

    from pyro_iterative import IterativeGuide

    guide = IterativeGuide(model, num_iterations=5)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
"""

from .guides import (
    AmortizedGuide,
    EncoderIterativeGuide,
    IterativeGuide,
    LocalGuide,
    LocalInference,
    OptimizingGuide,
    PerDatapointGuide,
    SemiAmortizedGuide,
    SequenceEncoderGuide,
    SequenceSemiAmortizedGuide,
    SequentialIterativeGuide,
    TrainableGuide,
)
from .inference import LocalOptimization, ModelPasses
from .matching import (
    inference_parameters,
    matched_amortized_guide,
    matched_iterative_guide,
    matched_sequence_encoder,
)
from .optimization import optimize_local

__all__ = [
    "AmortizedGuide",
    "EncoderIterativeGuide",
    "IterativeGuide",
    "LocalGuide",
    "LocalInference",
    "LocalOptimization",
    "ModelPasses",
    "OptimizingGuide",
    "PerDatapointGuide",
    "SemiAmortizedGuide",
    "SequenceEncoderGuide",
    "SequenceSemiAmortizedGuide",
    "SequentialIterativeGuide",
    "TrainableGuide",
    "inference_parameters",
    "matched_amortized_guide",
    "matched_iterative_guide",
    "matched_sequence_encoder",
    "optimize_local",
]

__version__ = "0.1.0"
