"""The deep Markov model's own inference network as a guide of this package, and its semi-amortized refinement.

:class:`SequenceEncoderGuide` is the structure of Krishnan et al.'s DMM guide (and of Pyro's DMM example): a
backward RNN over ``x_{t:T}`` combined with the previous step's latent; :class:`SequenceSemiAmortizedGuide` refines
its q with :class:`~pyro_iterative.guides.semi_amortized.SemiAmortizedGuide`'s gradient steps. The iterative guide
for sequences is :mod:`pyro_iterative.guides.sequential`; time steps are read by
:mod:`pyro_iterative.inference.time_steps`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..inference.batch import Batch
from ..inference.cost import ModelPasses
from ..inference.encodings import encode_data
from ..inference.inner_elbo import latent_masks
from ..inference.sites import SiteLayout
from ..inference.time_steps import TimeLayout, step_of, time_layout
from .amortized import AmortizedGuide
from .semi_amortized import SemiAmortizedGuide

__all__ = [
    "SequenceEncoderGuide",
    "SequenceSemiAmortizedGuide",
]


class _Combiner(nn.Module):
    """Krishnan et al.'s combiner: ``h = (tanh(W z_{t-1} + b) + h_rnn) / 2``, then q's location and log-scale from h,
    run forward in time from a learned ``z_0``."""

    def __init__(self, z_size: int, rnn_dim: int) -> None:
        super().__init__()
        self.z_to_hidden = nn.Linear(z_size, rnn_dim)
        self.loc = nn.Linear(rnn_dim, z_size)
        self.scale = nn.Linear(rnn_dim, z_size)
        self.z_0 = nn.Parameter(torch.zeros(z_size))

    def forward(self, h_rnn: torch.Tensor) -> torch.Tensor:
        """``(batch, steps, 2 * z_size)`` from ``(batch, steps, rnn_dim)``: each step reads the previous location."""
        previous, outputs = self.z_0.expand(h_rnn.shape[0], -1), []
        for t in range(h_rnn.shape[1]):
            hidden = 0.5 * (torch.tanh(self.z_to_hidden(previous)) + h_rnn[:, t])
            scale = F.softplus(self.scale(hidden)).clamp_min(torch.finfo(hidden.dtype).tiny)
            previous = self.loc(hidden)
            outputs.append(torch.cat([previous, scale.log()], dim=-1))
        return torch.stack(outputs, 1)


class _BackwardRNN(nn.Module):
    """A GRU run from each sequence's last real step back to its first (padding never enters it), from a learned
    initial state; its outputs are returned in time order, so that step t summarises ``x_{t:length}``."""

    def __init__(self, data_size: int, rnn_dim: int) -> None:
        super().__init__()
        self.gru = nn.GRU(data_size, rnn_dim, batch_first=True)
        self.h_0 = nn.Parameter(torch.zeros(rnn_dim))

    def forward(self, steps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        t = torch.arange(steps.shape[1], device=steps.device).expand(steps.shape[0], -1)
        # Reverse each sequence's first `length` steps, keep the padding in place (an involution).
        order = torch.where(t < lengths.unsqueeze(-1), lengths.unsqueeze(-1) - 1 - t, t).unsqueeze(-1)
        outputs, _ = self.gru(steps.gather(1, order.expand_as(steps)), self.h_0.expand(1, len(steps), -1).contiguous())
        return outputs.gather(1, order.expand_as(outputs))


class SequenceEncoderGuide(AmortizedGuide):
    """The deep Markov model's inference network (Krishnan, Shalit & Sontag 2017; Pyro's DMM example): a backward
    GRU over ``x_{t:T}`` whose state at step t is combined with the previous step's latent to give q(z_t).

    The GRU runs from each sequence's last real step back to its first (padding never enters it); the combiner gives
    ``q(z_t) = N(loc_t, scale_t)`` from ``(tanh(W m_{t-1} + b) + h_t) / 2``. One deliberate difference from Pyro's
    DMM guide, which reads a *sample* of z_{t-1}: this one reads the *location* m_{t-1} of q(z_{t-1}) (m_0 learned),
    so that q is mean-field over steps, the family of every other guide of this package. A comparison of inference
    methods then compares inference, not variational families. Like the other guides it masks q where the model
    masks a step, and padded steps keep lambda_0.

    Groups of per-step latents (see :func:`~pyro_iterative.inference.time_steps.time_layout`) that share their steps
    are encoded together. The data and the step masks are read by one forward pass of the model per call.

    Usage::

        guide = SequenceEncoderGuide(DMM(data_dim=88), rnn_dim=600)
        svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 3e-4}), Trace_ELBO())
        svi.step(sequences, lengths, subsample_size=20)

    :param callable model: a Pyro model with its sequences in a ``pyro.plate`` and one site per step.
    :param int rnn_dim: the GRU's and the combiner's hidden width (600 in Krishnan et al. and Pyro's example).
    :param callable step: ``step(site_name)`` gives ``(group, step number)`` or ``None`` (see
        :func:`~pyro_iterative.inference.time_steps.step_of`).
    :param kwargs: ``data_encoding`` and the options of :class:`~pyro_iterative.guides.base.LocalGuide` (not
        ``observe``: the data and masks come from the model).
    """

    _refinement_gives_masks = True

    def __init__(
        self, model: Callable, *, rnn_dim: int = 600, step: Callable[[str], tuple[str, int] | None] = step_of,
        **kwargs,
    ) -> None:
        if kwargs.get("observe") is not None:
            raise ValueError(f"{type(self).__name__} reads each batch's data and step masks from the model itself; "
                             "drop observe=.")
        if kwargs.get("hidden_sizes") is not None:
            raise ValueError(f"{type(self).__name__} is sized by rnn_dim, not hidden_sizes.")
        if kwargs.get("small_init"):
            raise ValueError(f"{type(self).__name__} has no small_init: its combiner starts as Krishnan et al.'s.")
        if kwargs.pop("clip_gradient", None) is not None:
            raise ValueError(f"{type(self).__name__} has no clip_gradient: its encoder is trained on the plain ELBO "
                             "gradient, as Krishnan et al.'s (for clipping, use pyro.optim.ClippedAdam, as Pyro's DMM "
                             "example does).")
        if isinstance(rnn_dim, bool) or not isinstance(rnn_dim, int) or rnn_dim < 1:
            raise ValueError(f"rnn_dim must be a positive integer, got {rnn_dim!r}.")
        super().__init__(model, clip_gradient=None, **kwargs)
        self.rnn_dim = rnn_dim
        self.step = step

    @staticmethod
    def encoder_parameters(time: TimeLayout, rnn_dim: int) -> int:
        """Parameters of the networks this guide builds for ``time`` at ``rnn_dim`` (to size it without building
        it, as :func:`~pyro_iterative.matching.matched_sequence_encoder` does)."""
        z_size, data_size, r = sum(g.size for g in time.groups), time.groups[0].data_size, rnn_dim
        rnn = 3 * (data_size * r + r * r + 2 * r) + r  # weights, both biases, the learned initial state
        return rnn + (z_size * r + r) + 2 * (r * z_size + z_size) + z_size

    @staticmethod
    def shared_time_layout(layout: SiteLayout, step: Callable = step_of) -> TimeLayout:
        """The model's time steps (:func:`~pyro_iterative.inference.time_steps.time_layout`), checked to be one time
        axis: every latent group has the same steps."""
        time = time_layout(layout, step)
        if len({group.steps for group in time.groups}) != 1:
            names = ", ".join(f"'{g.name}' ({g.num_steps} steps)" for g in time.groups)
            raise ValueError(f"The latent groups {names} do not share their steps; one encoder reads one time axis.")
        return time

    def _setup_networks(self, layout: SiteLayout) -> None:
        self.time = self.shared_time_layout(layout, self.step)
        z_size, data_size = sum(g.size for g in self.time.groups), self.time.groups[0].data_size
        # Plain nn.Modules: reading them registers their parameters with Pyro (and the guide moves them to the
        # model's dtype and device).
        self.rnn = _BackwardRNN(data_size, self.rnn_dim)
        self.combiner = _Combiner(z_size, self.rnn_dim)

    def _reads_data_by_running_the_model(self) -> int:
        return 1

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """One forward pass of the model (to read the data and the step masks), no backward pass."""
        return ModelPasses(forward=1, backward=0)

    def _encode_with_masks(
        self, args: tuple, kwargs: dict, batch: Batch, global_values: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        rnn, combiner = self.rnn, self.combiner  # read here, outside any poutine.block: SVI sees their parameters
        lam_0 = self._initial_lambda(len(batch))
        with torch.no_grad():
            _, model_trace = self._reader(args, kwargs, self._local_params(lam_0), batch, global_values,
                                          check_data=True)
        masks = latent_masks(model_trace, self.layout, len(batch))
        groups = self.time.groups
        like = self._parameter_like()
        data = encode_data(self.data_encoding, self._observed_data(model_trace).to(like.dtype))
        on = torch.ones(len(batch), dtype=torch.bool, device=like.device)
        step_on = torch.stack([masks.get(name, on) for name in groups[0].sites], 1)  # (batch, T)
        h_rnn = rnn(groups[0].step_data(data), step_on.sum(-1))
        # (batch, T, 2 * z_size): the locations, then the log-scales, of every group
        loc, log_scale = combiner(h_rnn).chunk(2, -1)
        lam, start = {}, 0
        for group in groups:
            group_lam = torch.cat([loc[..., start: start + group.size], log_scale[..., start: start + group.size]], -1)
            group_lam = torch.where(step_on.unsqueeze(-1), group_lam, group.stack(lam_0))  # padded steps: lambda_0
            lam.update(group.unstack(group_lam))
            start += group.size
        return lam, masks

    def _encode(
        self, args: tuple, kwargs: dict, batch: Batch, global_values: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return self._encode_with_masks(args, kwargs, batch, global_values)[0]


class SequenceSemiAmortizedGuide(SequenceEncoderGuide, SemiAmortizedGuide):
    """The DMM's inference network (:class:`SequenceEncoderGuide`) refined by
    :class:`~pyro_iterative.guides.semi_amortized.SemiAmortizedGuide`'s gradient steps on the whole sequence's ELBO
    (semi-amortized variational inference, Kim et al. 2018), with its defaults (adaptive per-sequence step sizes).

    Usage::

        guide = SequenceSemiAmortizedGuide(DMM(data_dim=88), rnn_dim=600, num_steps=5)
        guide.elbo_trajectory(sequences[:8], lengths[:8])   # (6, 8): the encoder's ELBO, then after each step

    :param final_check: as in :class:`~pyro_iterative.guides.semi_amortized.SemiAmortizedGuide`, but off
        (``False``) by default here: the check at inference that became that guide's default was measured on models of
        independent datapoints only, and the deep Markov model's records were made without it.
    :param kwargs: ``rnn_dim`` and ``step`` of :class:`SequenceEncoderGuide`, ``num_steps``, ``lr``, ``adaptive``,
        ... of :class:`~pyro_iterative.guides.semi_amortized.SemiAmortizedGuide`.
    """

    def __init__(self, model: Callable, *, final_check: bool | str = False, **kwargs) -> None:
        super().__init__(model, final_check=final_check, **kwargs)

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """The encoder's read pass, then the semi-amortized steps (see
        :meth:`~pyro_iterative.guides.semi_amortized.SemiAmortizedGuide.inference_cost`)."""
        return SemiAmortizedGuide.inference_cost(self, num_iterations)
