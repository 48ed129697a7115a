"""SemiAmortizedGuide: an encoder's q refined by gradient steps on the ELBO inside the guide.

Two published training schemes: back-propagating through the unrolled steps (Kim et al., ICML 2018,
SA-VAE) or not (Krishnan, Liang & Hoffman, AISTATS 2018). The encoder itself is
:class:`~pyro_iterative.guides.amortized.AmortizedGuide`'s; this module holds the refinement, whose gradient
steps are :func:`~pyro_iterative.inference.gradient.elbo_gradient`.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..inference.batch import Batch
from ..inference.cost import ModelPasses
from ..inference.gradient import elbo_gradient
from .amortized import AmortizedGuide
from .base import Refinement

__all__ = [
    "SemiAmortizedGuide",
]


class SemiAmortizedGuide(AmortizedGuide):
    """An encoder's q refined by ``num_steps`` steps of gradient ascent on the ELBO, per datapoint.

    lambda_0 comes from the encoder; each step estimates the per-datapoint ELBO with Pyro traces, clips
    each datapoint's gradient to norm ``max_grad_norm``, and takes an SGD step with momentum:
    ``v <- momentum * v + g``, ``lambda <- lambda + lr * v``. The defaults are Kim et al.'s
    (lr 1, momentum 0.5, clip 5). The model is always trained at the refined q (its gradient is the
    final ELBO's, with q held fixed). The encoder is trained

    - with ``backprop=True`` (SA-VAE): on the final ELBO, back-propagated through the unrolled steps
      (Hessian-vector products with respect to lambda; one extra ELBO gradient per training call);
    - with ``backprop=False`` (Krishnan et al.): on the ELBO of its own output lambda_0.

    Usage::

        guide = SemiAmortizedGuide(model, num_steps=5, backprop=True, observe=lambda idx, x, **kw: x[idx])
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        guide.elbo_trajectory(x_test)   # shape (num_steps + 1, batch)

    :param int num_steps: refinement steps per call; may be changed after training.
    :param float lr: step size.
    :param float momentum: momentum of the steps.
    :param float max_grad_norm: each datapoint's gradient is clipped to this norm (``None``: no clipping).
    :param bool backprop: SA-VAE training (through the steps) or Krishnan et al. (encoder on its own ELBO).
    :param kwargs: ``hidden_sizes`` and the options of :class:`~pyro_iterative.guides.amortized.AmortizedGuide`.
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_steps: int = 5,
        lr: float = 1.0,
        momentum: float = 0.5,
        max_grad_norm: float | None = 5.0,
        backprop: bool = True,
        **kwargs,
    ) -> None:
        self._check_steps(num_steps)
        if not lr > 0 or not 0 <= momentum < 1 or (max_grad_norm is not None and not max_grad_norm > 0):
            raise ValueError(
                f"need lr > 0, 0 <= momentum < 1 and max_grad_norm > 0 (or None); got lr={lr}, momentum={momentum}, "
                f"max_grad_norm={max_grad_norm}."
            )
        super().__init__(model, **kwargs)
        self.num_steps = num_steps
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.max_grad_norm = max_grad_norm
        self.backprop = bool(backprop)

    @staticmethod
    def _check_steps(num_steps: int) -> None:
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}.")

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """``num_steps`` forward and backward passes, plus one forward pass to read the data without ``observe``."""
        steps = self.num_steps if num_iterations is None else num_iterations
        return ModelPasses(forward=steps + self._reads_data_by_running_the_model(), backward=steps)

    def _clip(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.max_grad_norm is None:
            return grads
        norm = torch.cat(grads, dim=-1).norm(dim=-1, keepdim=True)  # per datapoint, over all local sites
        factor = (self.max_grad_norm / (norm + 1e-12)).clamp(max=1.0)
        return [grad * factor for grad in grads]

    def _refine(
        self,
        args: tuple,
        kwargs: dict,
        batch: Batch,
        global_values: dict[str, torch.Tensor],
        *,
        num_iterations: int | None = None,
        record: bool = False,
    ) -> Refinement:
        num_steps = self.num_steps if num_iterations is None else num_iterations
        self._check_steps(num_steps)
        encoded = self._encode(args, kwargs, batch, global_values)
        names = list(encoded)
        training = torch.is_grad_enabled()
        unroll = training and self.backprop
        start = {name: value.detach().requires_grad_(unroll) for name, value in encoded.items()}
        lam = dict(start)
        velocity = {name: torch.zeros_like(value) for name, value in start.items()}
        elbos, path, network_loss = [], [], None
        for t in range(num_steps):
            leaves = lam if unroll else {name: value.detach().requires_grad_() for name, value in lam.items()}
            step = self._count_nonfinite(
                elbo_gradient(self._inner_elbo, args, kwargs, leaves, batch, global_values, create_graph=unroll)
            )
            grads = [step.grads[name] for name in names]
            if record:
                elbos.append(step.elbo.detach())
                path.append({name: value.detach() for name, value in leaves.items()})
            if training and not self.backprop and t == 0:
                # Krishnan et al.: the encoder ascends the ELBO of its own output.
                network_loss = -sum((grad.detach() * encoded[name]).sum(-1) for name, grad in zip(names, grads))
            for name, grad in zip(names, self._clip(grads)):
                velocity[name] = self.momentum * velocity[name] + grad
                # datapoints with a non-finite gradient keep their previous estimate
                lam[name] = step.keep_finite(leaves[name] + self.lr * velocity[name], leaves[name])
        if unroll:
            # SA-VAE: the final ELBO's gradient w.r.t. lambda_K, pulled back through the steps to lambda_0.
            with torch.enable_grad():
                final = {name: value.detach().requires_grad_() for name, value in lam.items()}
                elbo, _ = self._inner_elbo(args, kwargs, self._local_params(final), batch, global_values)
                outer = torch.autograd.grad(elbo.sum(), [final[name] for name in names])
                pulled = torch.autograd.grad([lam[name] for name in names], [start[name] for name in names], outer)
            network_loss = -sum((grad.detach() * encoded[name]).sum(-1) for name, grad in zip(names, pulled))
        return Refinement(
            lam={name: value.detach() for name, value in lam.items()}, elbos=elbos, path=path, network_loss=network_loss
        )
