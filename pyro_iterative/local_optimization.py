"""optimize_local: per-datapoint optimization of q with a torch optimizer, the model held fixed.

Used for the optimizer comparison (SGD, momentum, RMSProp, Adam against learned inference), for
measuring the amortization gap, and as test-time refinement of any guide. The ELBO is the same
per-datapoint estimate the guides use (:class:`~pyro_iterative.inner_elbo.InnerELBO`); the optimizer
works on the sum over datapoints, so each datapoint's path is independent of its batch-mates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from .inner_elbo import InnerELBO, locate_batch
from .local_guide import LocalGuide, ModelPasses, initial_lambda, local_params
from .sites import discover_sites

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "OPTIMIZERS",
    "LocalOptimization",
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

    :ivar trajectory: ``(num_steps + 1, batch)`` per-datapoint ELBO estimates at the start and after
        every step.
    :ivar lam: per local site, the final ``(batch, 2 * size)`` locations and log-scales (unconstrained).
    :ivar posterior: per local site, the final q in the site's constrained space.
    :ivar cost: model passes per datapoint spent (one forward and backward pass per step).
    """

    trajectory: torch.Tensor
    lam: dict[str, torch.Tensor]
    posterior: dict[str, dist.Distribution]
    cost: ModelPasses


def optimize_local(
    model: Callable,
    *args,
    init: LocalGuide | None = None,
    optimizer: str = "adam",
    lr: float | None = None,
    num_steps: int = 100,
    num_particles: int = 1,
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
        refined = optimize_local(model, x_test, init=guide, num_steps=100)
        gap = refined.trajectory[-1] - guide.elbo_trajectory(x_test)[-1]

    :param optimizer: ``"sgd"``, ``"momentum"`` (SGD with momentum 0.9), ``"rmsprop"`` or ``"adam"``.
    :param lr: learning rate; default from :data:`DEFAULT_LEARNING_RATES`.
    :param num_steps: optimizer steps.
    :param num_particles: samples per datapoint in each ELBO estimate.
    :param plate_name: the data plate (ignored with ``init``, whose plate is used).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer '{optimizer}'; choose one of {sorted(OPTIMIZERS)}.")
    lr = DEFAULT_LEARNING_RATES[optimizer] if lr is None else lr
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}.")
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}.")
    if init is not None:
        if not isinstance(init, LocalGuide):
            raise TypeError(f"init must be a guide of pyro_iterative (a LocalGuide), got {type(init).__name__}.")
        refinement, batch, global_values = init._inspect(args, kwargs, None, record=False)
        layout = init.layout
        lam = {name: value.detach() for name, value in refinement.lam.items()}
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
    leaves = [value.clone().requires_grad_() for value in lam.values()]
    names = list(lam)
    opt = OPTIMIZERS[optimizer](leaves, lr)
    trajectory = []
    with torch.enable_grad():
        for step in range(num_steps + 1):
            elbo, _ = inner(args, kwargs, local_params(layout, dict(zip(names, leaves))), batch, global_values)
            trajectory.append(elbo.detach())
            if step == num_steps:
                break
            grads = torch.autograd.grad(-elbo.sum(), leaves)  # no .backward(): the model's parameters stay untouched
            for leaf, grad in zip(leaves, grads):
                leaf.grad = grad
            opt.step()
    final = {name: leaf.detach() for name, leaf in zip(names, leaves)}
    params = local_params(layout, final)
    return LocalOptimization(
        trajectory=torch.stack(trajectory),
        lam=final,
        posterior={site.name: site.distribution(*params[site.name]) for site in layout.local_sites},
        cost=ModelPasses(forward=num_steps, backward=num_steps),
    )
