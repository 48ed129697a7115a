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
from ..inference.inner_elbo import latent_masks
from .amortized import AmortizedGuide
from .base import Refinement

__all__ = [
    "FINAL_CHECKS",
    "SemiAmortizedGuide",
]

#: The settings of :class:`SemiAmortizedGuide`'s ``final_check``: in training and at inference, never, at inference
#: only (the default).
FINAL_CHECKS: tuple = (True, False, "inference")


class SemiAmortizedGuide(AmortizedGuide):
    """An encoder's q refined by ``num_steps`` steps of gradient ascent on the ELBO, per datapoint.

    lambda_0 comes from the encoder; each step estimates the per-datapoint ELBO, clips each datapoint's gradient to
    norm ``max_grad_norm`` and moves lambda along it. The model is always trained at the refined q (its gradient is
    the final ELBO's, with q held fixed). Two step rules:

    - ``adaptive=True`` (the default): each datapoint keeps its own step size, starting at ``lr``. A step is kept
      only if it raises that datapoint's ELBO by at least ``margin`` standard errors, judged on ``test_particles`` fresh
      draws of the noise shared by the old and the new lambda (common random numbers, independent of the draws that
      gave the gradient, so the test is fair); the step size then grows by 1.2, otherwise the step is undone and the
      step size halves. Steps that overshoot on a model of high curvature are undone and the step size shrinks to
      the model's scale, and near an optimum, where a step's effect is smaller than the noise, most steps are undone:
      no step size is tuned per model (at the exact optimum of a linear-Gaussian model, 5 steps lose 0.008 nats per
      datapoint on average, against 0.21 for a one-draw test, and 1e-4 with ``margin=3``, which the model zoo
      (``docs/defaults.md``) found too strict elsewhere; the final check, below, sends most of that loss back at
      inference). The test costs ``2 * test_particles`` forward passes of the model per step (vectorized over the
      particles).
    - ``adaptive=False``: plain SGD with momentum, ``v <- momentum * v + g``, ``lambda <- lambda + lr * v``; Kim et
      al.'s SA-VAE used ``lr=1.0, momentum=0.5, max_grad_norm=5.0``, which diverges on models of higher curvature.

    The encoder is trained

    - with ``backprop=True`` (SA-VAE): on the final ELBO, back-propagated through the unrolled steps
      (Hessian-vector products with respect to lambda);
    - with ``backprop=False`` (Krishnan et al.): on the ELBO of its own output lambda_0.

    Usage::

        guide = SemiAmortizedGuide(model, num_steps=5, observe=lambda idx, x, **kw: x[idx])
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        guide.elbo_trajectory(x_test)   # shape (num_steps + 1, batch)
        sa_vae = SemiAmortizedGuide(model, adaptive=False, lr=1.0, momentum=0.5)   # Kim et al.'s rule
        unchecked = SemiAmortizedGuide(model, final_check=False)   # no final check at inference

    :param int num_steps: refinement steps per call; may be changed after training.
    :param float lr: step size (with ``adaptive``, each datapoint's initial step size).
    :param float momentum: momentum of the steps (with ``adaptive``, reset where a step is undone).
    :param float max_grad_norm: each datapoint's gradient is clipped to this norm (``None``: no clipping).
    :param bool adaptive: per-datapoint step sizes with steps taken only where they raise the ELBO.
    :param int test_particles: with ``adaptive``, the common-noise draws per datapoint that judge a step (with 1 a
        step is kept whenever its single paired estimate does not fall, without a standard error).
    :param float margin: with ``adaptive``, the standard errors of the paired gain a step must clear to be kept.
    :param final_check: with ``adaptive``, after the last step each datapoint keeps its refined q only where a test
        on ``check_particles`` fresh draws finds it better than the encoder's by ``margin`` standard errors, and goes
        back to the encoder's q elsewhere: steps that each passed their test can still add up to a small loss where the
        encoder's q is already at the optimum. ``"inference"`` (the default): only where the guide runs without
        gradients (evaluation, :meth:`elbo_trajectory`, ``Predictive``, anything under ``torch.no_grad()``), so that
        training is exactly that of ``False``. On the model zoo's two models where the encoder's q is at the optimum
        the steps lost 0.003-0.006 nats per datapoint from it without the check and at most 0.0005 with it; elsewhere
        the check changed the final q by 0.0085 nats or less (``docs/defaults.md``). ``True``: in training as well
        (trained through it, the guide got stuck on the zoo's Gamma-Poisson model at Adam 3e-3). ``False``: never, as
        in the records made before it was the default. ``2 * check_particles`` more forward passes per call where it
        runs.
    :param int check_particles: the draws of the final check (32: with 8, the check sent back datapoints whose steps
        had gained, 0.064 nats on the zoo's factor-analysis model, against 0.0085 with 32).
    :param bool backprop: SA-VAE training (through the steps) or Krishnan et al. (encoder on its own ELBO).
    :param kwargs: ``hidden_sizes`` and the options of :class:`~pyro_iterative.guides.amortized.AmortizedGuide`,
        among them its encoder's gradient clip in training (``clip_gradient=3.0``; ``None``: the plain gradient, pulled
        back through the steps). On the model zoo the clip removed this guide's loss spike on a Gamma-Poisson model at
        Adam 3e-3 (121,907x to 9.6x) and raised it by 64 nats there at 1e-3, at a cost of 0.41 and 1.75 nats on the
        topic model (``docs/defaults.md``).
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_steps: int = 5,
        lr: float = 0.1,
        momentum: float = 0.0,
        max_grad_norm: float | None = 5.0,
        adaptive: bool = True,
        test_particles: int = 8,
        check_particles: int = 32,
        margin: float = 1.0,
        final_check: bool | str = "inference",
        backprop: bool = True,
        **kwargs,
    ) -> None:
        self._check_steps(num_steps)
        for name, value in (("test_particles", test_particles), ("check_particles", check_particles)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not (isinstance(final_check, bool) or (isinstance(final_check, str) and final_check in FINAL_CHECKS)):
            raise ValueError(f"final_check must be one of {FINAL_CHECKS}, got {final_check!r}.")
        if not margin >= 0:
            raise ValueError(f"margin must be a number of standard errors >= 0, got {margin!r}.")
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
        self.adaptive = bool(adaptive)
        self.test_particles = test_particles
        self.check_particles = check_particles
        self.margin = float(margin)
        self.final_check = final_check
        self.backprop = bool(backprop)

    _refinement_gives_masks = True

    @staticmethod
    def _check_steps(num_steps: int) -> None:
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}.")

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """One forward and backward pass per step and particle, ``2 * test_particles`` more forward passes per step
        with ``adaptive`` (its test), ``2 * check_particles`` once with ``final_check`` (counted by default: the cost is
        that of inference, where the check runs), and one forward pass to read the data without ``observe``."""
        steps = self.num_steps if num_iterations is None else num_iterations
        per_step = self.num_particles + (2 * self.test_particles if self.adaptive else 0)
        check = 2 * self.check_particles if self.adaptive and self.final_check in (True, "inference") else 0
        forward = steps * per_step + check + self._reads_data_by_running_the_model()
        return ModelPasses(forward=forward, backward=steps * self.num_particles)

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

        def gradient(lam: dict[str, torch.Tensor]):
            leaves = lam if unroll else {name: value.detach().requires_grad_() for name, value in lam.items()}
            step = elbo_gradient(self._inner_elbo, args, kwargs, leaves, batch, global_values, create_graph=unroll)
            return leaves, self._count_nonfinite(step)

        check = self.adaptive and (self.final_check is True or (self.final_check == "inference" and not training))

        def passes(before: dict, after: dict, num_particles: int) -> torch.Tensor:
            return self._improves(args, kwargs, batch, global_values, before, after, num_particles, self.margin)

        lam, (leaves, step) = dict(start), gradient(start)
        masks = latent_masks(step.model_trace, self.layout, len(batch))
        velocity = {name: torch.zeros_like(value) for name, value in start.items()}
        size = torch.full_like(step.elbo.detach(), self.lr).unsqueeze(-1)
        elbos, path, network_loss = [], [], None
        for t in range(num_steps):
            grads = [step.grads[name] for name in names]
            if record:
                elbos.append(step.elbo.detach())
                path.append({name: value.detach() for name, value in leaves.items()})
            if training and not self.backprop and t == 0:
                # Krishnan et al.: the encoder ascends the ELBO of its own output.
                network_loss = -sum((grad.detach() * encoded[name]).sum(-1) for name, grad in zip(names, grads))
            candidate = {}
            for name, grad in zip(names, self._clip(grads)):
                velocity[name] = self.momentum * velocity[name] + grad
                # datapoints with a non-finite gradient keep their previous estimate
                candidate[name] = step.keep_finite(leaves[name] + size * velocity[name], leaves[name])
            if self.adaptive:
                # a fair test: the gradient that chose the step came from other draws than the test's
                better = passes(leaves, candidate, self.test_particles)
                size = torch.where(better, size * 1.2, size * 0.5)
                zero = torch.zeros_like
                candidate = {name: torch.where(better, candidate[name], leaves[name]) for name in names}
                velocity = {name: torch.where(better, velocity[name], zero(velocity[name])) for name in names}
            lam = candidate
            if check and t + 1 == num_steps:
                kept = passes(start, lam, self.check_particles)
                lam = {name: torch.where(kept, lam[name], start[name]) for name in names}
            if t + 1 < num_steps or unroll:
                leaves, step = gradient(lam)
        if unroll:
            # SA-VAE: the final ELBO's gradient w.r.t. lambda_K, pulled back through the steps to lambda_0.
            outer = [step.grads[name].detach() for name in names]
            with torch.enable_grad():
                pulled = torch.autograd.grad([lam[name] for name in names], [start[name] for name in names], outer,
                                             allow_unused=True)
            pulled = [torch.zeros_like(start[n]) if g is None else g for n, g in zip(names, pulled)]
            network_loss = -sum((grad.detach() * encoded[name]).sum(-1) for name, grad in zip(names, pulled))
        return Refinement(
            lam={name: value.detach() for name, value in lam.items()}, elbos=elbos, path=path,
            network_loss=network_loss, masks=masks,
        )
