"""Evaluation of guides: ELBO per inference iteration, importance-sampled log-likelihood, amortization gap.

Every result is an :class:`Estimate`: per-datapoint values, their mean and standard error over
datapoints, and the model passes per datapoint spent to get them. The functions act on one call's
model arguments (one batch); :func:`over_batches` runs any of them over a data set in chunks and joins
the results. :func:`reconstruction` reads the model's predicted observations at a guide's q. Training,
data loading and plotting live elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import pyro.poutine as poutine
import torch

from .guides.base import LocalGuide, LocalInference
from .inference.cost import ModelPasses
from .inference.inner_elbo import InnerELBO, ReplayScorer
from .inference.optimize import DEFAULT_LEARNING_RATES, optimize_lambda

__all__ = [
    "AmortizationGap",
    "Estimate",
    "amortization_gap",
    "discrete_posterior",
    "elbo_per_iteration",
    "gap_failed",
    "log_likelihood",
    "over_batches",
    "reconstruction",
]


@dataclass
class Estimate:
    """Per-datapoint values (datapoints on the last dim) with the model passes per datapoint they cost.

    Usage::

        estimate = log_likelihood(model, guide, x_test)
        f"{estimate.mean:.2f} +- {estimate.standard_error:.2f} nats, {estimate.passes.total} passes"
    """

    values: torch.Tensor
    passes: ModelPasses

    @property
    def mean(self) -> torch.Tensor:
        """Mean over datapoints."""
        return self.values.mean(-1)

    @property
    def standard_error(self) -> torch.Tensor:
        """Standard error of the mean over datapoints (zero for a single datapoint)."""
        count = self.values.shape[-1]
        if count < 2:
            return torch.zeros_like(self.mean)
        return self.values.std(-1) / math.sqrt(count)

    def summary(self) -> dict:
        """Mean, standard error and passes as plain Python numbers (lists for a trajectory), for JSON."""
        return {
            "mean": self.mean.tolist(),
            "standard_error": self.standard_error.tolist(),
            "num_datapoints": self.values.shape[-1],
            "model_passes_per_datapoint": dataclasses.asdict(self.passes),
        }


def gap_failed(mean: float, standard_error: float, tolerance: float = 0.1) -> bool:
    """Whether a measured amortization gap is a failure of the local optimizer rather than a gap: the optimized q's
    ELBO is below the guide's by more than two standard errors and more than ``tolerance`` nats per datapoint. A true
    gap is never negative, so such a number says that the optimizer's step was too large for the model (or its
    estimates too noisy), not how good the guide is; reports print it as a failure and compare no gap with it. (From
    a q already at its optimum, local optimization loses a few hundredths of a nat: not counted as a failure.)

    Usage::

        gap_failed(-28.5, 1.9)    # True: local optimization made q worse
        gap_failed(-0.1, 0.2)     # False: no gap found, within noise
        gap_failed(-0.02, 0.001)  # False: a q at its optimum, moved a little
    """
    return mean < -max(2 * standard_error, tolerance)


@dataclass
class AmortizationGap:
    """The amortization gap of Cremer, Li & Duvenaud (ICML 2018) for a batch.

    :ivar gap: ``ELBO(q*) - ELBO(q)`` per datapoint, q the guide's final q and q* its local optimum.
    :ivar guide_elbo: ELBO of the guide's final q.
    :ivar optimized_elbo: ELBO of q*, found by local optimization from q until it stopped improving.
    :ivar trajectory: ``(K + 1, batch)`` ELBOs at every lambda the guide visited (its last row is ``guide_elbo``).

    Usage::

        result = amortization_gap(model, guide, x_test[:200])
        print(f"{result.gap.mean:.2f} +- {result.gap.standard_error:.2f} nats", result.fraction_closed)
    """

    gap: Estimate
    guide_elbo: Estimate
    optimized_elbo: Estimate
    trajectory: torch.Tensor

    @property
    def failed(self) -> bool:
        """Whether local optimization made q worse on average, beyond two standard errors and 0.1 nats
        (:func:`gap_failed`): then ``gap`` is not an amortization gap."""
        return gap_failed(float(self.gap.mean), float(self.gap.standard_error))

    @property
    def fraction_closed(self) -> torch.Tensor:
        """Per inference iteration, the fraction of ``ELBO(q*) - ELBO(lambda_0)`` it closed (on batch means)."""
        means = self.trajectory.mean(-1)
        total = self.optimized_elbo.mean - means[0]
        return (means[1:] - means[:-1]) / total


def elbo_per_iteration(
    guide: LocalGuide, *args, num_iterations: int | None = None, num_particles: int | None = None, **kwargs
) -> Estimate:
    """The guide's per-datapoint ELBO at every inference iteration: values of shape ``(K + 1, batch)``.

    With ``num_particles``, every iteration's q is scored with that many samples and common random numbers
    (see :meth:`~pyro_iterative.guides.base.LocalGuide.elbo_trajectory`).

    Usage::

        estimate = elbo_per_iteration(guide, x_test)
        estimate.mean, estimate.standard_error    # one entry per iteration 0..K
        elbo_per_iteration(guide, x_test, num_particles=50).mean   # resolved to hundredths of a nat
    """
    values = guide.elbo_trajectory(*args, num_iterations=num_iterations, num_particles=num_particles, **kwargs)
    cost = guide.inference_cost(num_iterations)
    return Estimate(values, ModelPasses(cost.forward + (num_particles or 1), cost.backward))


def _summed_weights(
    model: Callable, guide: LocalGuide, args: tuple, kwargs: dict, num_samples: int, chunk_size: int,
    weights: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """``logsumexp`` over ``num_samples`` draws from the guide's final q of ``weights(inner, args, kwargs, params,
    batch, global_values)``, drawn ``chunk_size`` at a time so that memory stays bounded."""
    inference = guide.refine(*args, **kwargs)
    inputs = (args, kwargs, inference.params(), inference.batch, inference.global_values)
    chunks, remaining = [], num_samples
    with torch.no_grad():
        while remaining:
            size = min(chunk_size, remaining)
            chunks.append(torch.logsumexp(weights(InnerELBO(model, guide.layout, size), *inputs), dim=0))
            remaining -= size
    return torch.logsumexp(torch.stack(chunks), dim=0)


def log_likelihood(
    model: Callable, guide: LocalGuide, *args, num_samples: int = 5000, chunk_size: int = 100, **kwargs
) -> Estimate:
    """Importance-sampled log p(x) per datapoint (the IWAE bound), with the guide's final q as proposal.

    ``log (1/S) sum_s p(x, z_s) / q(z_s)`` over ``num_samples`` samples, drawn ``chunk_size`` at a time so
    that memory stays bounded. Global latents, if any, are held at one sample from the guide's global
    posterior (the estimate is then conditional on it).

    Usage::

        estimate = log_likelihood(model, guide, x_test[:100], num_samples=5000)
        -estimate.mean    # negative log-likelihood in nats per datapoint
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    if model is not guide.model:
        raise ValueError("log_likelihood needs the guide's own model (the proposal is fitted to it).")
    values = _summed_weights(
        model, guide, args, kwargs, num_samples, chunk_size, lambda inner, *inputs: inner.log_weights(*inputs)
    ) - math.log(num_samples)
    cost = guide.inference_cost()
    return Estimate(values, ModelPasses(cost.forward + num_samples, cost.backward))


def discrete_posterior(
    model: Callable, guide: LocalGuide, site: str, *args, num_samples: int = 100, chunk_size: int = 100, **kwargs
) -> torch.Tensor:
    """``(batch, values)`` posterior probabilities p(c = k | x) of an enumerated discrete site, by importance sampling.

    ``p(x, c = k) ~ (1/S) sum_s p(x, c = k, z_s) / q(z_s)`` with the guide's final q over the continuous latents as
    proposal (the model's other enumerated sites summed out), normalised over ``k``. For a semi-supervised model
    whose label is summed out during training (M2), ``discrete_posterior(...).argmax(-1)`` classifies.

    Usage::

        probs = discrete_posterior(model, guide, "y", x_test, num_samples=100)
        accuracy = (probs.argmax(-1) == y_test).float().mean()
    """
    if not isinstance(num_samples, int) or num_samples < 1 or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"num_samples and chunk_size must be positive integers, got {num_samples!r}, {chunk_size!r}.")
    if model is not guide.model:
        raise ValueError("discrete_posterior needs the guide's own model (the proposal is fitted to it).")
    log_joint = _summed_weights(
        model, guide, args, kwargs, num_samples, chunk_size,
        lambda inner, *inputs: inner.log_weights_by_value(*inputs, site),
    )
    return torch.softmax(log_joint, dim=-1)


def amortization_gap(
    model: Callable,
    guide: LocalGuide,
    *args,
    optimizer: str = "adam",
    lr: float | None = None,
    max_steps: int = 5000,
    patience: int = 100,
    tol: float = 1e-3,
    num_particles: int = 1,
    eval_particles: int = 100,
    **kwargs,
) -> AmortizationGap:
    """Amortization gap: the ELBO gained by optimizing each datapoint's q locally from the guide's output.

    As Cremer et al. (2018) measure it: start from the guide's final q, run ``optimizer`` (Adam by default)
    on every datapoint's q until the batch's mean ELBO stops improving (``patience`` steps without a gain of
    ``tol``; at most ``max_steps``), and compare ELBOs, each estimated with ``eval_particles`` samples. Also
    gives the ELBO at every lambda the guide visited, so :attr:`AmortizationGap.fraction_closed` tells
    how much of the gap each inference iteration closes. Where the optimizer makes q worse beyond two standard
    errors and 0.1 nats (:attr:`AmortizationGap.failed`; e.g. Adam at 1e-2 on the deep Markov model of Bach
    chorales: -28.5 +- 1.9 nats, -0.2 +- 0.1 at 1e-3), a ``RuntimeWarning`` says so: the number is not a gap.

    Usage::

        result = amortization_gap(model, guide, x_test[:200])
        result.gap.mean, result.gap.standard_error
        result.fraction_closed        # per iteration of an IterativeGuide
    """
    if model is not guide.model:
        raise ValueError("amortization_gap needs the guide's own model.")
    inference = guide.refine(*args, record=True, **kwargs)
    batch, global_values = inference.batch, inference.global_values
    inner = InnerELBO(model, guide.layout, num_particles)
    evaluate = InnerELBO(model, guide.layout, eval_particles)

    def elbo_at(lam: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return evaluate(args, kwargs, inference.params(lam), batch, global_values)[0]

    optimized = optimize_lambda(
        inner, args, kwargs, batch, global_values, inference.lam, optimizer=optimizer, lr=lr, num_steps=max_steps,
        patience=patience, tol=tol,
    )
    trajectory = torch.stack([elbo_at(lam) for lam in inference.lams])
    final = elbo_at(optimized.lam)
    cost = guide.inference_cost()
    guide_elbo = Estimate(trajectory[-1], ModelPasses(cost.forward + eval_particles, cost.backward))
    optimized_passes = ModelPasses(
        cost.forward + optimized.cost.forward + eval_particles, cost.backward + optimized.cost.backward
    )
    result = AmortizationGap(
        gap=Estimate(final - trajectory[-1], optimized_passes),
        guide_elbo=guide_elbo,
        optimized_elbo=Estimate(final, optimized_passes),
        trajectory=trajectory,
    )
    if result.failed:
        step = DEFAULT_LEARNING_RATES[optimizer] if lr is None else lr
        warnings.warn(
            f"amortization_gap: local optimization ({optimizer}, step {step:g}, {num_particles} particle(s)) made q "
            f"worse ({float(result.gap.mean):.2f} +- {float(result.gap.standard_error):.2f} nats), so this is not an "
            f"amortization gap; measure it with a smaller lr or more num_particles.", RuntimeWarning, stacklevel=2)
    return result


def reconstruction(
    model: Callable, inference: LocalInference, *args, lam: dict[str, torch.Tensor] | None = None, **kwargs
) -> torch.Tensor:
    """The model's predicted observations at q's median: every observed site's mean, ``(batch, data_size)``.

    Every local latent is pinned to the median of q at ``lam`` (default: the final lambda of ``inference``, from
    :meth:`~pyro_iterative.guides.base.LocalGuide.refine`), global latents to the values the refinement used; the
    model runs once, and the mean of each observed site's distribution is read and flattened per datapoint, in
    the order of the observed sites (for a Bernoulli decoder: pixel probabilities). Every observed site's
    distribution must define ``.mean``.

    Usage::

        inference = guide.refine(x_test[:6], record=True)
        images = [reconstruction(model, inference, x_test[:6], lam=lam) for lam in inference.lams]
    """
    layout = inference.layout
    params = inference.params(lam)
    values = dict(inference.global_values)
    for site in layout.local_sites:
        values[site.name] = site.transform(site.unflatten(params[site.name][0]))
    observed = {site.name for site in layout.observed_sites}
    scorer = ReplayScorer(values, inference.batch, layout.plate, None, keep=observed)
    with torch.no_grad(), poutine.block(), scorer:
        model(*args, **kwargs)
    rows = [site.flatten(scorer.trace.nodes[site.name]["fn"].mean, layout.plate.dim) for site in layout.observed_sites]
    return torch.cat(rows, dim=-1)


def _join(parts: list):
    first = parts[0]
    if isinstance(first, Estimate):
        passes = ModelPasses(max(p.passes.forward for p in parts), max(p.passes.backward for p in parts))
        return Estimate(torch.cat([p.values for p in parts], dim=-1), passes)
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=-1)
    if dataclasses.is_dataclass(first):
        return type(first)(**{f.name: _join([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first)})
    raise TypeError(f"cannot join results of type {type(first).__name__}")


def over_batches(fn: Callable[[torch.Tensor], object], data: torch.Tensor, batch_size: int = 500):
    """Apply ``fn`` to consecutive chunks of ``data`` (datapoints on dim 0) and join the results.

    Estimates are joined along the datapoint dim (their passes are the largest of any chunk).

    Usage::

        over_batches(lambda x: log_likelihood(model, guide, x), x_test, batch_size=100)
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if len(data) == 0:
        raise ValueError("over_batches got an empty data set.")
    return _join([fn(data[start : start + batch_size]) for start in range(0, len(data), batch_size)])
