"""pyro-iterative: iterative amortized inference (Marino, Yue & Mandt, ICML 2018) for Pyro.

Guides (all Pyro guides, usable with SVI and Predictive): :class:`IterativeGuide` (learned iterative
refinement), :class:`AmortizedGuide` (the standard encoder), :class:`SemiAmortizedGuide` (encoder plus
gradient steps), :class:`PerDatapointGuide` (variational EM). :func:`optimize_local` optimizes q for a
batch with a torch optimizer. Data-parallel training with PyTorch Lightning (several processes, GPUs or
machines) lives in :mod:`pyro_iterative.lightning`, which needs the ``distributed`` extra and is not imported here.

Usage::

    from pyro_iterative import IterativeGuide

    guide = IterativeGuide(model, num_iterations=5)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
"""

from .amortized_guide import AmortizedGuide
from .fairness import inference_parameters, matched_amortized_guide
from .iterative_guide import IterativeGuide
from .local_guide import LocalGuide, ModelPasses
from .local_optimization import LocalOptimization, optimize_local
from .per_datapoint_guide import PerDatapointGuide
from .semi_amortized_guide import SemiAmortizedGuide

__all__ = [
    "AmortizedGuide",
    "IterativeGuide",
    "LocalGuide",
    "LocalOptimization",
    "ModelPasses",
    "PerDatapointGuide",
    "SemiAmortizedGuide",
    "inference_parameters",
    "matched_amortized_guide",
    "optimize_local",
]

__version__ = "0.1.0"
