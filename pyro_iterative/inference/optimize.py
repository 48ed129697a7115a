"""Per-datapoint optimization of lambda with a torch optimizer, the model held fixed: :func:`optimize_lambda`.

The loop behind :func:`pyro_iterative.optimize_local`, the amortization gap, the optimizer comparison and the
per-datapoint method's test-time inference. Each step is :func:`~pyro_iterative.inference.gradient.elbo_gradient`
(datapoints with a non-finite ELBO or gradient keep their previous lambda); the optimizer works on the sum over
datapoints, so each datapoint's path is independent of its batch-mates. Where lambda starts (lambda_0, a guide's
output) is the caller's choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pyro.distributions as dist
import torch

from .batch import Batch
from .cost import ModelPasses
from .gradient import elbo_gradient
from .inner_elbo import InnerELBO
from .parameters import local_params
from .step_test import improves

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "LocalOptimization",
    "OPTIMIZERS",
    "check_optimizer_settings",
    "optimize_lambda",
]

#: name -> torch.optim constructor taking (params, lr)
OPTIMIZERS: dict[str, Callable] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
}

#: learning rates used when ``lr`` is not given (tune them for your model: see the benchmarks). Adam's 5e-3 improves
#: a trained guide's q on every model of the zoo (``benchmarks/zoo.py``), where 5e-2 overshot on small models.
DEFAULT_LEARNING_RATES = {"sgd": 1e-3, "momentum": 1e-4, "rmsprop": 1e-2, "adam": 5e-3}


@dataclass
class LocalOptimization:
    """Result of :func:`optimize_lambda` (and of :func:`pyro_iterative.optimize_local`).

    :ivar trajectory: ``(steps + 1, batch)`` per-datapoint ELBO estimates at the start and after every
        step (``steps`` is ``num_steps`` unless ``patience`` stopped the run earlier).
    :ivar lam: per local site, the final ``(batch, 2 * size)`` locations and log-scales (unconstrained).
    :ivar posterior: per local site, the final q in the site's constrained space.
    :ivar cost: model passes per datapoint spent: one forward and one backward pass per step and particle (as the
        guides count them), and ``2 * test_particles`` forward passes for the final check.
    :ivar path: with ``record_path=True``, lambda at the start and after every step (else empty).
    :ivar nonfinite_gradients: datapoint-steps whose ELBO or gradient was not finite (they kept their lambda).
    :ivar kept: with a final check (``test_particles``), ``(batch,)`` booleans: the datapoints whose optimized lambda
        passed it (the others' ``lam`` is where they started); ``None`` without the check.

    Usage::

        result = optimize_local(model, x_test, num_steps=200)
        result.trajectory.mean(1)[-1], result.posterior["z"].mean
    """

    trajectory: torch.Tensor
    lam: dict[str, torch.Tensor]
    posterior: dict[str, dist.Distribution]
    cost: ModelPasses
    path: list[dict[str, torch.Tensor]] = field(default_factory=list)
    nonfinite_gradients: int = 0
    kept: torch.Tensor | None = None


def check_optimizer_settings(
    optimizer: str, lr: float | None, num_steps: int, patience: int | None, final_lr_factor: float = 1.0
) -> None:
    """Refuse an unknown optimizer name, a non-positive ``lr``, a negative ``num_steps``, a bad ``patience`` or a
    ``final_lr_factor`` outside [0, 1].

    Usage::

        check_optimizer_settings("adam", 1e-2, 100, None)   # returns None, or raises ValueError naming the setting
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer '{optimizer}'; choose one of {sorted(OPTIMIZERS)}.")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}.")
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}.")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience must be a positive integer or None, got {patience!r}.")
    if not 0 <= final_lr_factor <= 1:
        raise ValueError(
            f"final_lr_factor must be between 0 and 1 (1: a constant learning rate), got {final_lr_factor!r}."
        )


def optimize_lambda(
    inner: InnerELBO,
    args: tuple,
    kwargs: dict,
    batch: Batch,
    global_values: dict[str, torch.Tensor],
    lam: dict[str, torch.Tensor],
    *,
    optimizer: str = "adam",
    lr: float | None = None,
    num_steps: int = 100,
    patience: int | None = None,
    tol: float = 1e-3,
    record_path: bool = False,
    test_particles: int = 0,
    margin: float = 1.0,
    final_lr_factor: float = 1.0,
) -> LocalOptimization:
    """Ascend every datapoint's ELBO from ``lam`` with a torch optimizer; the model's parameters stay untouched.

    Usage::

        inference = guide.refine(x_test)             # start from a guide's q ...
        inner = InnerELBO(model, guide.layout, num_particles=1)
        result = optimize_lambda(inner, (x_test,), {}, inference.batch, inference.global_values, inference.lam,
                                 optimizer="adam", lr=1e-2, num_steps=500, patience=50)

    :param inner: the per-datapoint ELBO to ascend (its layout and number of particles).
    :param args: the model's positional arguments.
    :param kwargs: the model's keyword arguments.
    :param batch: the datapoints of the call.
    :param global_values: values of the model's global latents, held fixed.
    :param lam: per local site, the starting ``(batch, 2 * size)`` lambda (not modified).
    :param optimizer: a name from :data:`OPTIMIZERS`.
    :param lr: learning rate; default from :data:`DEFAULT_LEARNING_RATES`.
    :param num_steps: optimizer steps (the most, with ``patience``).
    :param patience: stop early once the batch's best mean ELBO has not risen by more than ``tol``
        (nats per datapoint) for this many steps.
    :param record_path: keep lambda after every step in the result's ``path`` (memory grows with the steps).
    :param test_particles: with a positive number, a final check: each datapoint keeps its optimized lambda only where
        its ELBO beats the starting one's by ``margin`` standard errors on this many fresh draws shared by both
        (:func:`~pyro_iterative.inference.step_test.improves`; antithetic pairs where ``inner`` draws pairs), and goes
        back to its starting lambda elsewhere, so that noisy steps near an optimum cannot leave q worse than it
        started. ``2 * test_particles`` more forward passes. ``0``: no check.
    :param margin: the standard errors the check asks of the gain.
    :param final_lr_factor: the learning rate falls along a cosine from ``lr`` to ``final_lr_factor * lr`` over
        ``num_steps`` (:class:`torch.optim.lr_scheduler.CosineAnnealingLR`, one step at a time, so that each
        datapoint's path still depends on nothing but its own gradients); ``1.0``: a constant rate.
    """
    check_optimizer_settings(optimizer, lr, num_steps, patience, final_lr_factor)
    if not isinstance(test_particles, int) or test_particles < 0 or (inner.antithetic and test_particles % 2):
        pairs = ", and even where the particles come in antithetic pairs (or draw them independently)"
        raise ValueError(f"test_particles must be a non-negative integer{pairs if inner.antithetic else ''}, "
                         f"got {test_particles!r}.")
    if not margin >= 0:
        raise ValueError(f"margin must be a number of standard errors >= 0, got {margin!r}.")
    leaves = {name: value.detach().clone().requires_grad_() for name, value in lam.items()}
    lr = DEFAULT_LEARNING_RATES[optimizer] if lr is None else lr
    opt = OPTIMIZERS[optimizer](list(leaves.values()), lr)
    schedule = None
    if final_lr_factor != 1 and num_steps > 0:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=num_steps, eta_min=final_lr_factor * lr)
    trajectory, path, best, best_step, nonfinite = [], [], -math.inf, 0, 0
    for step in range(num_steps + 1):
        result = elbo_gradient(inner, args, kwargs, leaves, batch, global_values)
        trajectory.append(result.elbo.detach())
        if record_path:
            path.append({name: leaf.detach().clone() for name, leaf in leaves.items()})
        mean = result.elbo.detach().mean().item()
        if mean > best + tol:
            best, best_step = mean, step
        if step == num_steps or (patience is not None and step - best_step >= patience):
            break
        nonfinite += result.nonfinite
        previous = {name: leaf.detach().clone() for name, leaf in leaves.items()} if result.nonfinite else {}
        for name, leaf in leaves.items():
            leaf.grad = -result.grads[name]  # descend the negative ELBO; no .backward(), so no model parameter moves
        opt.step()
        if schedule is not None:
            schedule.step()
        with torch.no_grad():
            for name, before in previous.items():  # datapoints with a non-finite gradient keep their lambda
                leaves[name].copy_(result.keep_finite(leaves[name], before))
    final = {name: leaf.detach() for name, leaf in leaves.items()}
    steps = len(trajectory) - 1
    kept = None
    if test_particles:
        tester = InnerELBO(inner.model, inner.layout, test_particles, fast=inner.fast, antithetic=inner.antithetic)
        kept = improves(tester, args, kwargs, local_params(inner.layout, lam), local_params(inner.layout, final),
                        batch, global_values, margin)
        final = {name: torch.where(kept.unsqueeze(-1), value, lam[name].detach()) for name, value in final.items()}
    params = local_params(inner.layout, final)
    passes = steps * inner.num_particles
    return LocalOptimization(
        trajectory=torch.stack(trajectory),
        lam=final,
        posterior={site.name: site.distribution(*params[site.name]) for site in inner.layout.local_sites},
        cost=ModelPasses(forward=passes + 2 * test_particles, backward=passes),
        path=path,
        nonfinite_gradients=nonfinite,
        kept=kept,
    )
