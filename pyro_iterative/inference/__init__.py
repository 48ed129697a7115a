"""The inference machinery under every guide: sites, batches, lambda, the inner ELBO and its gradient, networks.

- :mod:`~pyro_iterative.inference.sites`: which sample sites of a model are local latents, global latents and
  observations (read from a prototype trace);
- :mod:`~pyro_iterative.inference.batch`: which datapoints a call is about;
- :mod:`~pyro_iterative.inference.parameters`: lambda, q's per-datapoint parameters, and lambda_0;
- :mod:`~pyro_iterative.inference.inner_elbo`: the per-datapoint ELBO a guide evaluates inside its forward pass;
- :mod:`~pyro_iterative.inference.gradient`: one refinement step, the ELBO's gradient with non-finite values
  contained;
- :mod:`~pyro_iterative.inference.optimize`: lambda optimized with a torch optimizer;
- :mod:`~pyro_iterative.inference.step_test`: whether a move of q helps, judged on common random numbers;
- :mod:`~pyro_iterative.inference.clipping`: each datapoint's training gradient into an encoder, bounded by its
  running median;
- :mod:`~pyro_iterative.inference.encodings` and :mod:`~pyro_iterative.inference.networks`: what the update
  networks read, and the networks themselves;
- :mod:`~pyro_iterative.inference.cost`: model passes, the unit of inference cost;
- :mod:`~pyro_iterative.inference.time_steps`: which local sites are the time steps of one latent (sequence models).

Nothing here is a guide (see :mod:`pyro_iterative.guides`) or knows about training runs; this layer imports
nothing else from the package.
"""

from .batch import Batch, locate_batch
from .clipping import RunningMedianClip
from .cost import ModelPasses
from .encodings import GRADIENT_ENCODINGS, encode_gradient, encoded_size, prediction_errors
from .gradient import ELBOGradient, elbo_gradient
from .inner_elbo import (
    InnerELBO,
    ReplayScorer,
    can_draw_pairs,
    check_observations,
    latent_masks,
    per_datapoint_elbo,
)
from .networks import GatedUpdate, Highway, mlp
from .optimize import DEFAULT_LEARNING_RATES, OPTIMIZERS, LocalOptimization, check_optimizer_settings, optimize_lambda
from .parameters import CONSTRAINED_LOG_SCALE_RANGE, LOG_SCALE_RANGE, LocalParams, initial_lambda, local_params
from .sites import LocalSite, ObservedSite, SiteLayout, discover_sites, model_mask
from .step_test import improves, paired_gain
from .time_steps import StepGroup, TimeLayout, step_of, time_layout

__all__ = [
    "Batch",
    "CONSTRAINED_LOG_SCALE_RANGE",
    "DEFAULT_LEARNING_RATES",
    "ELBOGradient",
    "GRADIENT_ENCODINGS",
    "GatedUpdate",
    "Highway",
    "InnerELBO",
    "LOG_SCALE_RANGE",
    "LocalOptimization",
    "LocalParams",
    "LocalSite",
    "ModelPasses",
    "OPTIMIZERS",
    "ObservedSite",
    "ReplayScorer",
    "RunningMedianClip",
    "SiteLayout",
    "StepGroup",
    "TimeLayout",
    "can_draw_pairs",
    "check_observations",
    "check_optimizer_settings",
    "discover_sites",
    "elbo_gradient",
    "encode_gradient",
    "encoded_size",
    "improves",
    "initial_lambda",
    "latent_masks",
    "local_params",
    "locate_batch",
    "mlp",
    "model_mask",
    "optimize_lambda",
    "paired_gain",
    "per_datapoint_elbo",
    "prediction_errors",
    "step_of",
    "time_layout",
]
