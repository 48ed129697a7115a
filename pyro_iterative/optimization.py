"""optimize_local: per-datapoint optimization of q with a torch optimizer, the model held fixed.

Used for the optimizer comparison (SGD, momentum, RMSProp, Adam against learned inference), for
measuring the amortization gap, and as test-time refinement of any guide. It starts from lambda_0 or from
a guide's q (:meth:`~pyro_iterative.guides.base.LocalGuide.refine`); the loop is
:func:`~pyro_iterative.inference.optimize.optimize_lambda`, on the same per-datapoint ELBO the guides use.
"""

from __future__ import annotations

from typing import Callable

import pyro.poutine as poutine

from .guides.base import LocalGuide
from .inference.batch import locate_batch
from .inference.inner_elbo import InnerELBO, can_draw_pairs
from .inference.optimize import LocalOptimization, check_optimizer_settings, optimize_lambda
from .inference.parameters import initial_lambda
from .inference.sites import discover_sites

__all__ = [
    "optimize_local",
]


def optimize_local(
    model: Callable,
    *args,
    init: LocalGuide | None = None,
    optimizer: str = "adam",
    lr: float | None = None,
    num_steps: int = 200,
    num_particles: int = 4,
    antithetic: bool | None = None,
    patience: int | None = None,
    tol: float = 1e-3,
    record_path: bool = False,
    plate_name: str | None = None,
    test_particles: int = 16,
    margin: float = 1.0,
    final_lr_factor: float = 0.1,
    **kwargs,
) -> LocalOptimization:
    """Optimize q's parameters for one batch with a torch optimizer, holding the model fixed.

    Starts from lambda_0 (unconstrained location 0, scale 1) or, with ``init=guide``, from that guide's
    final q (its global latents are then held at one sample from its global guide). ``args`` and
    ``kwargs`` are the model's own arguments.

    By default each of the 200 steps takes its gradient from two antithetic pairs of draws (a draw and its mirror image
    about q's location: on a model whose log-density is near quadratic in the latents the locations' gradient is then
    nearly exact), the learning rate falls along a cosine to a tenth of its start, so that the last steps settle near
    an optimum instead of hovering around it, and a final check keeps a datapoint's optimized q only where it beats the
    starting one on 16 fresh draws of noise shared by both, so that noisy steps near an optimum do not leave q worse
    than it started. On the model zoo (``benchmarks/zoo.py``, ``docs/defaults.md``) one draw and no check lowered the
    ELBO of a trained guide's q on 7 of 48 cells, where it was already near the optimum; one pair, 100 steps at a
    constant rate and the check found no gain on 1 (gains of 0.003-0.006 nats that a longer, many-draw run finds there);
    these defaults, at four times the model passes, gain on every cell. The decay shortens the distance the steps
    travel: from lambda_0, far from the optimum, give enough steps or ``final_lr_factor=1.0``.
    ``num_particles=1, test_particles=0, final_lr_factor=1.0`` is a plain single-draw optimizer at a constant rate
    (the optimizer comparison's setting).

    Usage::

        result = optimize_local(model, x_test, optimizer="adam", lr=0.05, num_steps=200)
        result.trajectory.mean(1)               # mean ELBO after each step
        refined = optimize_local(model, x_test, init=guide, num_steps=5000, patience=200)  # until it stalls
        refined.kept.float().mean()             # the share of datapoints whose optimized q passed the final check
        plain = optimize_local(model, x_test, num_particles=1, test_particles=0, final_lr_factor=1.0)  # plain Adam

    :param optimizer: ``"sgd"``, ``"momentum"`` (SGD with momentum 0.9), ``"rmsprop"`` or ``"adam"``.
    :param lr: learning rate; default from :data:`~pyro_iterative.inference.optimize.DEFAULT_LEARNING_RATES`.
    :param num_steps: optimizer steps (the most, with ``patience``).
    :param num_particles: samples per datapoint in each ELBO estimate.
    :param antithetic: draw them in antithetic pairs. ``None`` (the default): wherever pairs can be drawn (an even
        ``num_particles``, a model without enumerated sites), independent draws elsewhere; ``True`` insists (an error
        otherwise); ``False`` never.
    :param patience: stop early once the batch's best mean ELBO has not risen by more than ``tol``
        (nats per datapoint) for this many steps.
    :param record_path: keep lambda after every step in the result's ``path`` (memory grows with the steps).
    :param plate_name: the data plate (ignored with ``init``, whose plate is used).
    :param test_particles: draws of the final check (in antithetic pairs with ``antithetic``: then an even number);
        ``0``: no check, the optimizer's last q is returned. The check costs ``2 * test_particles`` forward passes.
    :param margin: the standard errors of the paired gain a datapoint's optimized q must clear in the check.
    :param final_lr_factor: the learning rate falls along a cosine from ``lr`` to ``final_lr_factor * lr`` over
        ``num_steps`` (``1.0``: a constant rate).
    """
    check_optimizer_settings(optimizer, lr, num_steps, patience, final_lr_factor)  # before any model pass
    if init is not None:
        if not isinstance(init, LocalGuide):
            raise TypeError(f"init must be a guide of pyro_iterative (a LocalGuide), got {type(init).__name__}.")
        inference = init.refine(*args, **kwargs)
        layout, batch, global_values, lam = init.layout, inference.batch, inference.global_values, inference.lam
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
    if antithetic is None:
        antithetic = can_draw_pairs(layout, num_particles)
    inner = InnerELBO(model, layout, num_particles, antithetic=antithetic)
    return optimize_lambda(
        inner, args, kwargs, batch, global_values, lam, optimizer=optimizer, lr=lr, num_steps=num_steps,
        patience=patience, tol=tol, record_path=record_path, test_particles=test_particles, margin=margin,
        final_lr_factor=final_lr_factor,
    )
