"""pyro-iterative: iterative amortized inference (Marino, Yue & Mandt, ICML 2018) for Pyro.

Usage::

    from pyro_iterative import IterativeGuide

    guide = IterativeGuide(model, num_iterations=5)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
"""

from .iterative_guide import IterativeGuide
from .local_guide import LocalGuide

__all__ = [
    "IterativeGuide",
    "LocalGuide",
]

__version__ = "0.1.0"
