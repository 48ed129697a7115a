"""One step of every refinement: the per-datapoint ELBO at lambda, its gradient, non-finite values contained.

:func:`elbo_gradient` is the step that the iterative guide, the semi-amortized guide and local optimization
all take: estimate each datapoint's ELBO at lambda (:class:`~pyro_iterative.inference.inner_elbo.InnerELBO`),
differentiate the sum over datapoints with respect to lambda (so that no datapoint's gradient depends on
its batch-mates), and find the datapoints whose ELBO or gradient is not finite. Their gradients are
zeroed, they are counted, and :meth:`ELBOGradient.keep_finite` keeps their previous lambda, so that one bad
datapoint never spoils its batch. What is done with the gradient (a learned update, an SGD step, a torch
optimizer) is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro.poutine import Trace

from .batch import Batch
from .inner_elbo import InnerELBO
from .parameters import local_params

__all__ = [
    "ELBOGradient",
    "elbo_gradient",
]


@dataclass
class ELBOGradient:
    """The result of :func:`elbo_gradient` for one batch.

    :ivar elbo: ``(batch,)`` ELBO estimates at lambda (with its graph, when lambda carried one).
    :ivar grads: per local site, ``dELBO_i / dlambda_i`` as ``(batch, 2 * size)``, zero for non-finite datapoints.
    :ivar finite: ``(batch,)`` mask of the datapoints whose ELBO and gradient were finite, or ``None`` when all were
        (the common case, which costs one check).
    :ivar model_trace: the model's sites inside the data plate, as :class:`InnerELBO` returns them.

    Usage::

        step = elbo_gradient(inner, args, kwargs, leaves, batch, global_values)
        new = {name: step.keep_finite(leaves[name] + 0.1 * grad, leaves[name]) for name, grad in step.grads.items()}
    """

    elbo: torch.Tensor
    grads: dict[str, torch.Tensor]
    finite: torch.Tensor | None
    model_trace: Trace

    @property
    def nonfinite(self) -> int:
        """How many datapoints had a non-finite ELBO or gradient."""
        return 0 if self.finite is None else int((~self.finite).sum())

    def keep_finite(self, new: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """``new`` where the datapoint was finite, ``previous`` (its lambda before the step) elsewhere."""
        if self.finite is None:
            return new
        return torch.where(self.finite.unsqueeze(-1), new, previous)


def elbo_gradient(
    inner: InnerELBO,
    args: tuple,
    kwargs: dict,
    lam: dict[str, torch.Tensor],
    batch: Batch,
    global_values: dict[str, torch.Tensor],
    *,
    create_graph: bool = False,
    check_data: bool = False,
) -> ELBOGradient:
    """The per-datapoint ELBO at ``lam`` and its gradient with respect to ``lam``, non-finite datapoints contained.

    ``lam`` maps each local site to a ``(batch, 2 * size)`` tensor that requires grad (a leaf, or a tensor
    computed from the caller's graph when ``create_graph`` unrolls through the step).

    Usage::

        leaves = {name: value.detach().requires_grad_() for name, value in lam.items()}
        step = elbo_gradient(inner, (x,), {}, leaves, batch, {})
        step.elbo.mean(), step.grads["z"].shape, step.nonfinite

    :param create_graph: keep the gradient's graph (to differentiate through the step).
    :param check_data: refuse non-finite or raw ``uint8`` observations first (see
        :func:`~pyro_iterative.inference.inner_elbo.check_observations`).
    """
    with torch.enable_grad():
        elbo, model_trace = inner(
            args, kwargs, local_params(inner.layout, lam), batch, global_values, check_data=check_data
        )
        grads = torch.autograd.grad(elbo.sum(), list(lam.values()), create_graph=create_graph)
    finite = torch.isfinite(elbo)
    for grad in grads:
        finite = finite & torch.isfinite(grad).all(-1)
    if bool(finite.all()):
        finite = None
    else:
        grads = [torch.where(finite.unsqueeze(-1), grad, torch.zeros_like(grad)) for grad in grads]
    return ELBOGradient(elbo=elbo, grads=dict(zip(lam, grads)), finite=finite, model_trace=model_trace)
