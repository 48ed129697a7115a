"""SequentialIterativeGuide: iterative amortized inference for sequence models, one update network shared by all
time steps (after Marino, Cvitkovic & Yue, "A General Method for Amortizing Variational Filtering", NeurIPS 2018).

This module holds the refinement loop over stacked time steps. How the steps are recognised is
:mod:`pyro_iterative.inference.time_steps`; masks of padded steps are read by
:mod:`pyro_iterative.inference.inner_elbo`; site handling, global latents and the final q are
:class:`~pyro_iterative.guides.base.LocalGuide`'s. The i.i.d. guide is :mod:`pyro_iterative.guides.iterative`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..inference.batch import Batch
from ..inference.encodings import encode_data, encode_gradient, encoded_size
from ..inference.gradient import elbo_gradient
from ..inference.inner_elbo import latent_masks
from ..inference.networks import DEFAULT_HIDDEN_LAYERS, GatedUpdate, auto_width
from ..inference.sites import SiteLayout
from ..inference.time_steps import StepGroup, step_of, time_layout
from .base import Refinement
from .iterative import IterativeGuide

__all__ = [
    "SequentialIterativeGuide",
]


def _neighbours(lam: torch.Tensor) -> torch.Tensor:
    """``(batch, steps, 2 * width)``: each step's previous and next lambda, zeros beyond the ends."""
    edge = torch.zeros_like(lam[:, :1])
    return torch.cat([torch.cat([edge, lam[:, :-1]], 1), torch.cat([lam[:, 1:], edge], 1)], -1)


class SequentialIterativeGuide(IterativeGuide):
    """Iterative amortized inference for models of sequences: one update network per latent, shared by every step.

    The model draws its local latents in a ``pyro.markov`` loop, one site per step (``z_1``, ..., ``z_T``, as in
    Pyro's deep Markov model), and observes each step's data (``x_1``, ..., ``x_T``). The guide groups the sites by
    their names (:func:`~pyro_iterative.inference.time_steps.time_layout`) and keeps, for every sequence and step, the
    parameters lambda_t = (loc, log-scale) of a diagonal Normal q(z_t) in unconstrained space (mean-field over steps).
    Each iteration evaluates the ELBO of the whole sequence once (one model pass, whatever ``T``), takes its gradient
    with respect to every lambda_t, and updates all steps at once with the group's gated update network, which reads
    that step's lambda_t, its encoded gradient, that step's observations and (``neighbours=True``) lambda_{t-1} and
    lambda_{t+1}. The network's size does not depend on the number of steps.

    This is the *smoothing* form: the gradient is that of the full-sequence ELBO, so q(z_t) is informed by the whole
    sequence, as is the true posterior. (Marino et al.'s filtering form updates q(z_t) from the step-t objective with
    the past fixed, usable online; in a Pyro model that runs whole sequences it needs one model pass per step and
    iteration, ``T`` times the cost, and is not built here.)

    Padding: where the model masks a step (``.mask(...)`` on its distribution or ``poutine.mask``, as the DMM does
    beyond each sequence's length), q is masked alike, the step's lambda stays at lambda_0 and its neighbours read
    zeros in its place: a padded step changes neither the ELBO nor the other steps' updates. The guide is built for
    the number of steps its set-up call has; pad every batch to that length.

    Training is that of :class:`~pyro_iterative.guides.iterative.IterativeGuide`, whose options it shares (not
    ``low_memory``, nor the ``"errors"`` input): the networks get the ELBO averaged over the updated estimates, inner
    gradients detached; the model gets the final ELBO's gradient, through Pyro's stock ``Trace_ELBO``.

    Usage::

        model = DMM(data_dim=88)                                   # models.DMM: sites z_1..z_T, x_1..x_T
        guide = SequentialIterativeGuide(model, num_iterations=5)
        svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 3e-4}), Trace_ELBO())
        svi.step(sequences, lengths, subsample_size=20)
        guide.elbo_trajectory(sequences[:8], lengths[:8]).mean(1)  # mean ELBO after 0, 1, ..., 5 iterations

    :param callable model: a Pyro model with its sequences in a ``pyro.plate`` and one site per step.
    :param bool neighbours: the update of step t also reads lambda_{t-1} and lambda_{t+1} of the same latent.
    :param callable step: ``step(site_name)`` gives ``(group, step number)`` or ``None`` (default
        :func:`~pyro_iterative.inference.time_steps.step_of`: names like ``z_12``).
    :param kwargs: the options of :class:`~pyro_iterative.guides.iterative.IterativeGuide`: ``num_iterations``,
        ``hidden_sizes`` (by default two layers of :func:`~pyro_iterative.inference.networks.auto_width` of what one
        step's network reads and writes), ``encode`` (``"gradient"`` and/or ``"data"``: the step's own observations
        and the observed sites that have no step), ``gradient_encoding``, ``data_encoding``, ``small_init``,
        ``highway``, and those of :class:`~pyro_iterative.guides.base.LocalGuide`.
    :param bool normalize_hidden: as for :class:`~pyro_iterative.guides.iterative.IterativeGuide`, but off by
        default here: it was measured on the model zoo's models of independent datapoints, not on sequence models
        (the deep Markov model's record was made without it).
    :param int num_particles: samples per sequence (one by default, for the same reason).
    :param antithetic: draw them in antithetic pairs (off by default here, for the same reason).
    :param gate_bias: the gates' initial bias (see IterativeGuide); PyTorch's initialisation by default here, for the
        same reason.
    :param bool horizon_check: not offered here (``False``): iterations past the trained number are not checked.
    """

    def __init__(
        self, model: Callable, *, neighbours: bool = True, step: Callable[[str], tuple[str, int] | None] = step_of,
        normalize_hidden: bool = False, num_particles: int = 1, antithetic: bool | None = False,
        gate_bias: float | None = None, horizon_check: bool = False, **kwargs,
    ) -> None:
        if horizon_check:
            raise ValueError(f"{type(self).__name__} does not offer horizon_check (not measured on sequence models); "
                             "leave it False.")
        super().__init__(model, normalize_hidden=normalize_hidden, num_particles=num_particles, antithetic=antithetic,
                         gate_bias=gate_bias, horizon_check=False, **kwargs)
        if "errors" in self.encode:
            raise ValueError(f"encode must be a non-empty subset of ('gradient', 'data') for sequences, got "
                             f"{self.encode}.")
        if self.low_memory:
            raise ValueError(f"{type(self).__name__} does not offer low_memory; lower num_iterations or the batch.")
        self.neighbours = bool(neighbours)
        self.step = step

    def build_update_networks(self, layout: SiteLayout, hidden_sizes: Sequence[int] | None = None) -> nn.ModuleList:
        """The update networks this guide builds for ``layout``, one per latent group (shared by its steps).

        Usage::

            nets = SequentialIterativeGuide(dmm).build_update_networks(guide.layout, (200, 200))

        :param hidden_sizes: the hidden widths (default: the guide's ``hidden_sizes``, or the automatic widths).
        """
        hidden_sizes = self.hidden_sizes if hidden_sizes is None else tuple(hidden_sizes)
        updates = []
        for group in time_layout(layout, self.step).groups:
            width = 2 * group.size
            inputs = width + (2 * width if self.neighbours else 0)
            if "gradient" in self.encode:
                inputs += encoded_size(self.gradient_encoding, width)
            constant = group.data_size if "data" in self.encode else 0
            hidden = hidden_sizes or (auto_width(group.data_size + width),) * DEFAULT_HIDDEN_LAYERS
            updates.append(GatedUpdate(inputs, width, hidden, constant_features=constant, gate_bias=self.gate_bias,
                                       small_init=self.small_init, highway=self.highway,
                                       normalize_hidden=self.normalize_hidden))
        return nn.ModuleList(updates)

    def _setup_networks(self, layout: SiteLayout) -> None:
        self.time = time_layout(layout, self.step)
        # A plain nn.ModuleList, one network per latent group: reading it registers its parameters with Pyro.
        self.update_nets = self.build_update_networks(layout)

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
        num_iterations = self.num_iterations if num_iterations is None else num_iterations
        self._check_iterations(num_iterations)
        nets = self.update_nets  # read outside the inner poutine.block(), so that SVI's parameter trace sees them
        groups = self.time.groups
        like = self._parameter_like()
        lam = self._initial_lambda(len(batch))
        training = torch.is_grad_enabled()
        projected, steps_on, masks, elbos, path, network_loss = [None] * len(nets), None, None, [], [], None
        for t in range(num_iterations):
            leaves = {name: value.detach().requires_grad_() for name, value in lam.items()}
            step = self._count_nonfinite(
                elbo_gradient(self._inner_elbo, args, kwargs, leaves, batch, global_values, check_data=t == 0)
            )
            if record:
                elbos.append(step.elbo.detach())
                path.append({name: value.detach() for name, value in leaves.items()})
            if t == 0:
                masks = latent_masks(step.model_trace, self.layout, len(batch))
                every = torch.ones(len(batch), dtype=torch.bool, device=like.device)  # a site the model never masks
                steps_on = [torch.stack([masks.get(name, every) for name in group.sites], 1).unsqueeze(-1)
                            for group in groups]  # (batch, steps, 1): False at padded steps
                if "data" in self.encode:
                    data = encode_data(self.data_encoding, self._observed_data(step.model_trace).to(like.dtype))
                    projected = [net.project(group.step_data(data)) for net, group in zip(nets, groups)]
            if training and t > 0:
                network_loss = self._add_elbo_of(lam, step.grads, network_loss)
            lam = {}
            for group, net, on, projection in zip(groups, nets, steps_on, projected):
                previous = group.stack(leaves).detach()
                new = self._update_steps(group, net, previous, group.stack(step.grads), on, projection)
                new = torch.where(on, new, previous)  # padded steps stay at lambda_0
                for name, value in group.unstack(new).items():
                    # sequences with a non-finite gradient keep their previous estimate
                    lam[name] = step.keep_finite(value, leaves[name].detach())
        if training:
            lam, network_loss = self._averaged_over_iterations(lam, network_loss, num_iterations)
        return Refinement(lam=lam, elbos=elbos, path=path, network_loss=network_loss, masks=masks)

    def _update_steps(
        self, group: StepGroup, net: GatedUpdate, previous: torch.Tensor, grad: torch.Tensor, on: torch.Tensor,
        projected: torch.Tensor | None,
    ) -> torch.Tensor:
        """Every step of one group at once: ``(batch, steps, 2 * size)`` in, the same out."""
        batch, steps, width = previous.shape
        inputs = [previous]
        if self.neighbours:
            inputs.append(_neighbours(previous * on))  # a padded neighbour reads as zeros
        if "gradient" in self.encode:
            inputs.append(encode_gradient(self.gradient_encoding, grad))
        flat = torch.cat(inputs, -1).reshape(batch * steps, -1)
        if projected is not None:
            projected = projected.reshape(batch * steps, -1)
        return net(flat, previous.reshape(batch * steps, width), projected).reshape(batch, steps, width)
