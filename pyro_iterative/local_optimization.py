"""optimize_local: per-datapoint optimization of q with a torch optimizer, the model held fixed.

Used for the optimizer comparison (SGD, momentum, RMSProp, Adam against learned inference), for
measuring the amortization gap, and as test-time refinement of any guide. The ELBO is the same
per-datapoint estimate the guides use (:class:`~pyro_iterative.inner_elbo.InnerELBO`); the optimizer
works on the sum over datapoints, so each datapoint's path is independent of its batch-mates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from .inner_elbo import Batch, InnerELBO, locate_batch
from .local_guide import LocalGuide, ModelPasses, Refinement, initial_lambda, local_params
from .sites import discover_sites

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "OPTIMIZERS",
    "LocalOptimization",
    "OptimizingGuide",
    "optimize_local",
]

#: name -> torch.optim constructor taking (params, lr)
OPTIMIZERS: dict[str, Callable] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
}

#: learning rates used when ``lr`` is not given (tune them for your model: see the benchmarks).
DEFAULT_LEARNING_RATES = {"sgd": 1e-3, "momentum": 1e-4, "rmsprop": 1e-2, "adam": 5e-2}


@dataclass
class LocalOptimization:
    """Result of :func:`optimize_local`.

    :ivar trajectory: ``(steps + 1, batch)`` per-datapoint ELBO estimates at the start and after every
        step (``steps`` is ``num_steps`` unless ``patience`` stopped the run earlier).
    :ivar lam: per local site, the final ``(batch, 2 * size)`` locations and log-scales (unconstrained).
    :ivar posterior: per local site, the final q in the site's constrained space.
    :ivar cost: model passes per datapoint spent (one forward and backward pass per step).
    :ivar path: with ``record_path=True``, lambda at the start and after every step (else empty).

    Usage::

        result = optimize_local(model, x_test, num_steps=200)
        result.trajectory.mean(1)[-1], result.posterior["z"].mean
    """

    trajectory: torch.Tensor
    lam: dict[str, torch.Tensor]
    posterior: dict[str, dist.Distribution]
    cost: ModelPasses
    path: list[dict[str, torch.Tensor]] = field(default_factory=list)


def optimize_local(
    model: Callable,
    *args,
    init: LocalGuide | None = None,
    optimizer: str = "adam",
    lr: float | None = None,
    num_steps: int = 100,
    num_particles: int = 1,
    patience: int | None = None,
    tol: float = 1e-3,
    record_path: bool = False,
    plate_name: str | None = None,
    **kwargs,
) -> LocalOptimization:
    """Optimize q's parameters for one batch with a torch optimizer, holding the model fixed.

    Starts from lambda_0 (unconstrained location 0, scale 1) or, with ``init=guide``, from that guide's
    final q (its global latents are then held at one sample from its global guide). ``args`` and
    ``kwargs`` are the model's own arguments.

    Usage::

        result = optimize_local(model, x_test, optimizer="adam", lr=0.05, num_steps=200)
        result.trajectory.mean(1)               # mean ELBO after each step
        refined = optimize_local(model, x_test, init=guide, num_steps=5000, patience=200)  # until it stalls

    :param optimizer: ``"sgd"``, ``"momentum"`` (SGD with momentum 0.9), ``"rmsprop"`` or ``"adam"``.
    :param lr: learning rate; default from :data:`DEFAULT_LEARNING_RATES`.
    :param num_steps: optimizer steps (the most, with ``patience``).
    :param num_particles: samples per datapoint in each ELBO estimate.
    :param patience: stop early once the batch's best mean ELBO has not risen by more than ``tol``
        (nats per datapoint) for this many steps.
    :param record_path: keep lambda after every step in the result's ``path`` (memory grows with the steps).
    :param plate_name: the data plate (ignored with ``init``, whose plate is used).
    """
    _check_settings(optimizer, lr, num_steps, patience)
    if init is not None:
        if not isinstance(init, LocalGuide):
            raise TypeError(f"init must be a guide of pyro_iterative (a LocalGuide), got {type(init).__name__}.")
        refinement, batch, global_values = init._inspect(args, kwargs, None, record=False)
        layout, lam = init.layout, refinement.lam
    else:
        with poutine.block():
            prototype = poutine.trace(model).get_trace(*args, **kwargs)
        layout = discover_sites(prototype, plate_name)
        if layout.global_names:
            raise ValueError(
                f"The model has global latent sites {list(layout.global_names)}; pass init=guide so that they are "
                "held at values from the guide's global posterior."
            )
        batch, global_values = locate_batch(model, layout.plate_name, args, kwargs), {}
        lam = initial_lambda(layout, len(batch), like=prototype.nodes[layout.local_sites[0].name]["value"])
    inner = InnerELBO(model, layout, num_particles)
    return _optimize(
        inner, args, kwargs, batch, global_values, lam, optimizer, lr, num_steps, patience, tol, record_path=record_path
    )


def _check_settings(optimizer: str, lr: float | None, num_steps: int, patience: int | None) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer '{optimizer}'; choose one of {sorted(OPTIMIZERS)}.")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}.")
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}.")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience must be a positive integer or None, got {patience!r}.")


def _optimize(
    inner: InnerELBO,
    args: tuple,
    kwargs: dict,
    batch: Batch,
    global_values: dict[str, torch.Tensor],
    lam: dict[str, torch.Tensor],
    optimizer: str = "adam",
    lr: float | None = None,
    num_steps: int = 100,
    patience: int | None = None,
    tol: float = 1e-3,
    *,
    record_path: bool = False,
) -> LocalOptimization:
    """The optimization loop of :func:`optimize_local`, from a given lambda."""
    _check_settings(optimizer, lr, num_steps, patience)
    layout = inner.layout
    names = list(lam)
    leaves = [lam[name].detach().clone().requires_grad_() for name in names]
    opt = OPTIMIZERS[optimizer](leaves, DEFAULT_LEARNING_RATES[optimizer] if lr is None else lr)
    trajectory, path, best, best_step = [], [], -math.inf, 0
    with torch.enable_grad():
        for step in range(num_steps + 1):
            elbo, _ = inner(args, kwargs, local_params(layout, dict(zip(names, leaves))), batch, global_values)
            trajectory.append(elbo.detach())
            if record_path:
                path.append({name: leaf.detach().clone() for name, leaf in zip(names, leaves)})
            mean = elbo.detach().mean().item()
            if mean > best + tol:
                best, best_step = mean, step
            if step == num_steps or (patience is not None and step - best_step >= patience):
                break
            grads = torch.autograd.grad(-elbo.sum(), leaves)  # no .backward(): the model's parameters stay untouched
            for leaf, grad in zip(leaves, grads):
                leaf.grad = grad
            opt.step()
    final = {name: leaf.detach() for name, leaf in zip(names, leaves)}
    params = local_params(layout, final)
    steps = len(trajectory) - 1
    return LocalOptimization(
        trajectory=torch.stack(trajectory),
        lam=final,
        posterior={site.name: site.distribution(*params[site.name]) for site in layout.local_sites},
        cost=ModelPasses(forward=steps, backward=steps),
        path=path,
    )


class OptimizingGuide(LocalGuide):
    """A guide with no inference network: q is optimized from lambda_0 for every batch, at every call.

    The test-time inference of the per-datapoint baseline (variational EM learns no encoder, so new data
    needs its own optimization). As a :class:`~pyro_iterative.local_guide.LocalGuide` it offers the same
    inspection and evaluation as the learned guides; it is not meant to be trained.

    Usage::

        guide = OptimizingGuide(model, optimizer="adam", lr=0.05, num_steps=100)
        guide.elbo_trajectory(x_test)   # (num_steps + 1, batch)

    :param optimizer: a name from :data:`OPTIMIZERS`.
    :param lr: learning rate; default from :data:`DEFAULT_LEARNING_RATES`.
    :param num_steps: optimizer steps per call.
    :param kwargs: options of :class:`~pyro_iterative.local_guide.LocalGuide`.
    """

    def __init__(
        self, model: Callable, *, optimizer: str = "adam", lr: float | None = None, num_steps: int = 100, **kwargs
    ) -> None:
        _check_settings(optimizer, lr, num_steps, None)
        super().__init__(model, **kwargs)
        self.optimizer, self.lr, self.num_steps = optimizer, lr, num_steps

    def _setup_networks(self, layout) -> None:
        self.register_buffer("_like", torch.zeros(()))  # no parameters: remember the dtype and device

    def _parameter_like(self) -> torch.Tensor:
        return self._like

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        steps = self.num_steps if num_iterations is None else num_iterations
        return ModelPasses(forward=steps, backward=steps)

    def _refine(self, args, kwargs, batch, global_values, *, num_iterations=None, record=False) -> Refinement:
        steps = self.num_steps if num_iterations is None else num_iterations
        lam = self._initial_lambda(len(batch))
        result = _optimize(self._inner_elbo, args, kwargs, batch, global_values, lam, self.optimizer, self.lr, steps,
                           record_path=record)
        return Refinement(lam=result.lam, elbos=list(result.trajectory[:-1]), path=result.path[:-1])
