"""Whether a move of q helps, judged per datapoint on common random numbers: :func:`improves`.

The test behind the semi-amortized guide's adaptive steps and the final check of
:func:`~pyro_iterative.inference.optimize.optimize_lambda`. Both ELBOs are estimated from the same fresh draws of the
noise (common random numbers), so that their difference is the move's effect rather than noise; with an antithetic
estimator the draws come in pairs and the standard error is taken over the pairs' means. Choosing the move (gradients,
an optimizer) is the caller's business.
"""

from __future__ import annotations

import torch

from .batch import Batch
from .inner_elbo import InnerELBO
from .parameters import LocalParams

__all__ = [
    "improves",
    "paired_gain",
]


def paired_gain(
    tester: InnerELBO,
    args: tuple,
    kwargs: dict,
    before: LocalParams,
    after: LocalParams,
    batch: Batch,
    global_values: dict[str, torch.Tensor],
) -> torch.Tensor:
    """``(draws, batch)`` differences ``log w(after) - log w(before)`` on common random numbers, one per independent
    draw (per antithetic pair where ``tester`` draws pairs); NaN where either is not finite. Leaves the global random
    state as it found it, bar one draw of the seed.

    Usage::

        tester = InnerELBO(model, layout, num_particles=8, antithetic=True)
        gain = paired_gain(tester, (x,), {}, local_params(layout, lam), local_params(layout, new_lam), batch, {})
        gain.mean(0), gain.std(0) / gain.shape[0] ** 0.5     # per datapoint: the move's effect and its SE
    """
    seed = int(torch.randint(0, 2**62, ()))
    device = next(iter(before.values()))[0].device
    devices = [device] if device.type == "cuda" else []
    weights = []
    for params in (before, after):
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            weights.append(tester.log_weights(args, kwargs, params, batch, global_values))
    return tester.pair_means(weights[1] - weights[0])


def improves(
    tester: InnerELBO,
    args: tuple,
    kwargs: dict,
    before: LocalParams,
    after: LocalParams,
    batch: Batch,
    global_values: dict[str, torch.Tensor],
    margin: float = 1.0,
) -> torch.Tensor:
    """``(batch,)`` booleans: where ``after``'s ELBO beats ``before``'s by at least ``margin`` standard errors of the
    :func:`paired_gain` (with a single draw, where it does not fall). False where either ELBO is not finite.

    Usage::

        better = improves(tester, (x,), {}, params, new_params, batch, {}, margin=1.0)
        lam = torch.where(better.unsqueeze(-1), new_lam, lam)
    """
    gain = paired_gain(tester, args, kwargs, before, after, batch, global_values)
    if gain.shape[0] == 1:
        return gain[0] >= 0
    return gain.mean(0) >= margin * gain.std(0) / gain.shape[0] ** 0.5
