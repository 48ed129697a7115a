"""IterativeGuide: iterative amortized inference (Marino, Yue & Mandt, ICML 2018) as a Pyro guide.

This module holds the learned refinement loop and its training signal. Site discovery, plates,
global latents, the final q, inspection and serialization are shared with the other guides and live
in :mod:`pyro_iterative.guides.base`; the ELBO gradient step in :mod:`pyro_iterative.inference.gradient`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..inference.batch import Batch
from ..inference.cost import ModelPasses
from ..inference.encodings import encode_data, encode_gradient, encoded_size, prediction_errors
from ..inference.gradient import elbo_gradient
from ..inference.inner_elbo import latent_masks
from ..inference.networks import DEFAULT_GATE_BIAS, DEFAULT_HIDDEN_LAYERS, GatedUpdate, auto_width
from ..inference.sites import SiteLayout
from .base import LocalGuide, Refinement

__all__ = [
    "ENCODABLE",
    "IterativeGuide",
]

#: What the update networks may read besides lambda, with what each input is (the names ``encode=`` takes).
ENCODABLE: dict[str, str] = {
    "data": "the datapoint's observed values",
    "errors": "prediction errors: observations minus predicted means, latents minus prior means (scaled)",
    "gradient": "the ELBO gradient with respect to lambda, encoded",
}


class IterativeGuide(LocalGuide):
    """A guide that learns to refine q(z|x) from ELBO gradients: iterative amortized inference.

    For every datapoint, the parameters lambda = (loc, log-scale) of a diagonal Normal over each local
    site (in unconstrained space) start at ``init_loc``/``init_scale`` and are updated
    ``num_iterations`` times. Each iteration estimates the per-datapoint ELBO at lambda with Pyro's
    trace machinery, takes its gradient with respect to lambda (of the sum over datapoints, so no
    datapoint depends on its batch-mates or the batch size), and feeds lambda, the encoded gradient
    and, by default, the datapoint's observed values to one update network per site, which outputs
    ``lambda <- g * lambda + (1 - g) * delta`` (the observed values do not change between iterations, so
    their share of the first layer is computed once per call). The model is then scored at a sample from
    the final q.

    Training follows the paper and works through Pyro's stock losses (``Trace_ELBO``,
    ``TraceMeanField_ELBO``, the ``ELBOModule`` of ``Trace_ELBO()(model, guide)``): the model's and
    the global sites' parameters get the gradient of the final estimate's ELBO only, and the update
    networks get the gradient of the ELBO averaged over the ``num_iterations`` updated estimates
    (inner gradients are detached, and each update is trained one step at a time).

    Usage::

        guide = IterativeGuide(model, num_iterations=5)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 2e-4}), Trace_ELBO())
        for step in range(num_steps):
            svi.step(x_batch)
        guide.elbo_trajectory(x_test).mean(1)   # mean ELBO after 0, 1, ..., 5 iterations
        guide.num_iterations = 20               # run longer at test time (iterations past 5 are checked)
        IterativeGuide(model, horizon_check=False)   # every iteration as the networks propose it

    Each iteration costs one forward and one backward pass of the model (decoder) per datapoint and particle (two
    particles by default: an antithetic pair), a cost a one-shot encoder does not pay; ``num_iterations`` can be
    changed after training. Iterations past the number the networks were trained for (:attr:`trained_iterations`)
    are checked at inference (``horizon_check``). The PyTorch JIT (``JitTrace_ELBO``) is not supported.

    :param callable model: a Pyro model with its datapoints in a ``pyro.plate``; local latents and
        observations inside it, global latents outside it.
    :param int num_iterations: inference iterations per call (the paper uses 5).
    :param hidden_sizes: widths of the update networks' hidden ELU layers; by default two layers of
        :func:`~pyro_iterative.inference.networks.auto_width` of what each site's network reads and writes (512 for
        the paper's MNIST model, 64 for a model with 7 observed values and 3 latents).
    :param encode: what the update networks see besides lambda: any of ``"gradient"`` (the ELBO gradient),
        ``"data"`` (the datapoint's observed values, all observed sites in the plate, flattened) and
        ``"errors"`` (the paper's variant for hierarchical models: observations minus their predicted means
        and latents minus their prior means, scaled; see :func:`~pyro_iterative.inference.encodings.prediction_errors`;
        every observed and local site's distribution must then define ``.mean``).
    :param str gradient_encoding: a name from :data:`~pyro_iterative.inference.encodings.GRADIENT_ENCODINGS`:
        ``"log_sign"`` (log-magnitude and sign, the paper's MNIST choice) or ``"layer_norm"`` (standardised per
        datapoint).
    :param str data_encoding: how the networks read the observed values, a name from
        :data:`~pyro_iterative.inference.encodings.DATA_ENCODINGS`: ``"symlog"`` (``sign(x) log(1 + |x|)``, the
        default: counts in the hundreds and raw measurements are safe) or ``"none"`` (as they are, as in the paper).
    :param gate_bias: the update networks' gates start with this bias (the proposals' with zero): at the default +2
        the gate is about 0.88, so an untrained update takes a small step towards its random proposal instead of
        half of one. On the model zoo this freed the Gamma-Poisson model's training (23 to 76 nats better on its four
        cells, Adam 1e-3 and 3e-3, seeds 0 and 1) at a cost of 0.8-1.6 nats on a learned-scale Gaussian VAE, and of
        0.3-4.3 nats on the 10-epoch MNIST comparison (``docs/defaults.md``). ``None``: PyTorch's initialisation, as
        in the paper's code and every record made before it became the default.
    :param bool small_init: start every update as an even smaller step (gate near 1, zero output weights), so that an
        untrained guide keeps q at lambda_0 (``False``: the heads' weights as PyTorch initialises them). Not the
        default: on MNIST the decoder then learns to ignore z while q sits at the prior (5.9 nats lost on the zoo's
        MNIST at Adam 1e-3).
    :param bool highway: the update networks' hidden-to-hidden layers are highway layers
        (:class:`~pyro_iterative.inference.networks.Highway`, as in the paper's reference code) instead of Linear + ELU;
        ``hidden_sizes`` must then be two or more equal widths (the default's are).
    :param bool normalize_hidden: standardise the update networks' hidden activations per datapoint (see
        :class:`~pyro_iterative.inference.networks.GatedUpdate`), so that their gates cannot saturate on inputs of
        large magnitude; no parameters are added. On by default (``False``: the networks of the paper's code and of
        every record made before it became the default).
    :param int num_particles: samples per datapoint in the inner ELBO estimate (by default one antithetic pair: 2).
    :param antithetic: draw them in antithetic pairs, a draw and its mirror image about q's location. ``None`` (the
        default): pairs wherever they can be drawn (an even ``num_particles``, a model without enumerated sites),
        independent draws elsewhere; ``True`` insists (an error otherwise); ``False`` never. On the model zoo the
        pair, not the second draw, is what improved q (``docs/defaults.md``); ``num_particles=1`` is the paper's
        single sample, at half the model passes per iteration.
    :param bool low_memory: keep only each update's inputs (lambda, the raw gradient) for the backward pass
        and recompute the update networks' activations there (``torch.utils.checkpoint``): training
        memory then hardly grows with ``num_iterations``, at the price of one more forward pass of the
        update networks per iteration. Results are the same either way.
    :param bool horizon_check: at inference (without gradients: evaluation, :meth:`elbo_trajectory`, ``Predictive``,
        anything under ``torch.no_grad()``), the iterations past :attr:`trained_iterations` are checked: each
        datapoint keeps an iteration's update only where a test on ``check_particles`` fresh draws, shared by its old
        and new q (common random numbers), finds the new q better by ``check_margin`` standard errors, and it stops at
        the first update that fails. The networks were never trained past that number of iterations; run longer, they
        drift a little from the optimum they approach. On the model zoo at 2K iterations the mean ELBO fell from one
        iteration to the next by more than its standard error on 6 of 16 cells without the check (by 0.0006-0.0023
        nats, and 0.13 on the Gamma-Poisson model) and on none with it (at a second seed on 7 without it, on 2 with
        it, by 1e-4 nats or less), at a price where running longer gains most: on MNIST the ELBO at 2K is 0.09 and 0.13
        nats above that at K with the check, 0.21 and 0.31 without (``docs/defaults.md``). Training, and every call
        up to the trained number of iterations, are unchanged. ``False``: every iteration as the networks propose it,
        as in the paper and every record made before.
    :param int check_particles: the draws of each check: ``2 * check_particles`` more forward passes of the model per
        checked iteration.
    :param float check_margin: the standard errors of the paired gain that an update past the horizon must clear (with
        1 the mean ELBO still fell by more than its standard error on the zoo's ``mixed`` model).
    :param kwargs: ``plate_name``, ``init_loc``, ``init_scale``, ``global_init_scale``, ``create_plates``,
        ``observe``, ``fast_path``, see :class:`~pyro_iterative.guides.base.LocalGuide`.
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_iterations: int = 5,
        hidden_sizes: Sequence[int] | None = None,
        encode: Sequence[str] = ("gradient", "data"),
        gradient_encoding: str = "log_sign",
        data_encoding: str = "symlog",
        gate_bias: float | None = DEFAULT_GATE_BIAS,
        small_init: bool = False,
        highway: bool = False,
        normalize_hidden: bool = True,
        num_particles: int = 2,
        antithetic: bool | None = None,
        low_memory: bool = False,
        horizon_check: bool = True,
        check_particles: int = 32,
        check_margin: float = 2.0,
        **kwargs,
    ) -> None:
        self._check_iterations(num_iterations)
        if isinstance(check_particles, bool) or not isinstance(check_particles, int) or check_particles < 1:
            raise ValueError(f"check_particles must be a positive integer, got {check_particles!r}.")
        if not check_margin >= 0:
            raise ValueError(f"check_margin must be a number of standard errors >= 0, got {check_margin!r}.")
        encode = tuple(encode)
        if not encode or set(encode) - set(ENCODABLE):
            raise ValueError(f"encode must be a non-empty subset of {tuple(ENCODABLE)}, got {encode}.")
        if gate_bias is not None and (isinstance(gate_bias, bool) or not isinstance(gate_bias, (int, float))
                                      or not math.isfinite(gate_bias)):
            raise ValueError(f"gate_bias must be a finite number (the default {DEFAULT_GATE_BIAS}) or None for "
                             f"PyTorch's initialisation, got {gate_bias!r}.")
        encoded_size(gradient_encoding, 1)  # validates the name
        encode_data(data_encoding, torch.zeros(1))  # validates the name
        super().__init__(model, num_particles=num_particles, antithetic=antithetic, **kwargs)
        self.num_iterations = num_iterations
        self.hidden_sizes = None if hidden_sizes is None else tuple(hidden_sizes)
        self.encode = encode
        self.gradient_encoding = gradient_encoding
        self.data_encoding = data_encoding
        self.gate_bias = None if gate_bias is None else float(gate_bias)
        self.small_init = bool(small_init)
        self.highway = bool(highway)
        self.normalize_hidden = bool(normalize_hidden)
        self.low_memory = bool(low_memory)
        self.horizon_check = bool(horizon_check)
        self.check_particles = check_particles
        self.check_margin = float(check_margin)
        #: the number of iterations the update networks were trained for, past which ``horizon_check`` checks them:
        #: ``num_iterations`` at construction, then that of the latest training call (a call with gradients enabled)
        self.trained_iterations = num_iterations

    _refinement_gives_masks = True

    @staticmethod
    def _check_iterations(num_iterations: int) -> None:
        if not isinstance(num_iterations, int) or num_iterations < 1:
            raise ValueError(f"num_iterations must be an integer >= 1, got {num_iterations!r}.")

    def build_update_networks(self, layout: SiteLayout, hidden_sizes: Sequence[int] | None = None) -> nn.ModuleList:
        """The update networks this guide builds for ``layout``, one per local site, with this guide's options.

        Public so that the networks can be sized without running the model
        (:func:`~pyro_iterative.matching.matched_iterative_guide` counts their parameters).

        Usage::

            nets = IterativeGuide(model, highway=True).build_update_networks(guide.layout, (256, 256))
            sum(p.numel() for p in nets.parameters())

        :param hidden_sizes: the hidden widths (default: the guide's ``hidden_sizes``, or the automatic widths).
        """
        if "errors" in self.encode and layout.enumerated_names:
            raise ValueError(
                f"encode='errors' reads each site's predicted mean, which the enumerated sites "
                f"{layout.enumerated_names} make depend on their values; use encode=('gradient', 'data') for "
                "models with enumerated latents."
            )
        hidden_sizes = self.hidden_sizes if hidden_sizes is None else tuple(hidden_sizes)
        updates = []
        for site in layout.local_sites:
            width = 2 * site.size
            inputs = width
            if "gradient" in self.encode:
                inputs += encoded_size(self.gradient_encoding, width)
            if "errors" in self.encode:
                inputs += layout.data_size + sum(other.value_size for other in layout.local_sites)
            # The data is the same at every iteration: its first-layer projection is computed once per call.
            constant = layout.data_size if "data" in self.encode else 0
            hidden = hidden_sizes or (auto_width(layout.data_size + width),) * DEFAULT_HIDDEN_LAYERS
            updates.append(GatedUpdate(inputs, width, hidden, constant_features=constant, gate_bias=self.gate_bias,
                                       small_init=self.small_init, highway=self.highway,
                                       normalize_hidden=self.normalize_hidden))
        return nn.ModuleList(updates)

    def _setup_networks(self, layout: SiteLayout) -> None:
        # A plain nn.ModuleList: reading the attribute registers its parameters with Pyro (pyro.module).
        self.update_nets = self.build_update_networks(layout)

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """``num_iterations`` forward and backward passes per datapoint and particle (the data comes from the
        first), and with ``horizon_check`` ``2 * check_particles`` more forward passes per iteration past
        :attr:`trained_iterations` (counted by default: the cost is that of inference, where the check runs)."""
        num_iterations = self.num_iterations if num_iterations is None else num_iterations
        passes = num_iterations * self.num_particles
        checked = max(0, num_iterations - self.trained_iterations) if self.horizon_check else 0
        return ModelPasses(forward=passes + 2 * self.check_particles * checked, backward=passes)

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
        # Read the networks here, outside the inner poutine.block(), so that SVI's parameter trace sees them.
        nets = self.update_nets
        sites = self.layout.local_sites
        like = self._parameter_like()
        lam = self._starting_lambda(args, kwargs, batch, global_values)
        training = torch.is_grad_enabled()
        # A starting lambda computed by a network (a subclass's encoder) is trained on its own ELBO, below.
        start_learned = training and any(value.requires_grad for value in lam.values())
        recompute = training and self.low_memory
        if training:
            self.trained_iterations = num_iterations
        # At inference, iterations past the trained horizon are checked (see horizon_check); None: none are.
        horizon = self.trained_iterations if self.horizon_check and not training else None
        moving = None  # (batch, 1): the datapoints whose checked iterations have all passed their checks
        projected, errors, elbos, path, network_loss, masks = [None] * len(nets), None, [], [], None, None
        for t in range(num_iterations):
            leaves = {name: value.detach().requires_grad_() for name, value in lam.items()}
            step = self._count_nonfinite(
                elbo_gradient(self._inner_elbo, args, kwargs, leaves, batch, global_values, check_data=t == 0)
            )
            elbo, model_trace, grads = step.elbo, step.model_trace, [step.grads[site.name] for site in sites]
            if record:
                elbos.append(elbo.detach())
                path.append({name: value.detach() for name, value in leaves.items()})
            if t == 0:
                masks = latent_masks(model_trace, self.layout, len(batch))
            if t == 0 and "data" in self.encode:
                data = encode_data(self.data_encoding, self._observed_data(model_trace).to(like.dtype))
                projected = [net.project(data) for net in nets]
            if "errors" in self.encode:
                errors = prediction_errors(model_trace, self.layout, self._inner_elbo.particle_dim).detach()
                errors = errors.to(like.dtype)
            if training and (t > 0 or start_learned):
                network_loss = self._add_elbo_of(lam, step.grads, network_loss)
            new_lam = {}
            for site, net, grad, projection in zip(sites, nets, grads, projected):
                previous = leaves[site.name].detach()
                inputs = (net, previous, grad, projection, errors)
                if recompute:  # low_memory: keep only the inputs, recompute the update in the backward pass
                    new_lam[site.name] = checkpoint(self._update, *inputs, use_reentrant=False)
                else:
                    new_lam[site.name] = self._update(*inputs)
                # datapoints with a non-finite gradient keep their previous estimate
                new_lam[site.name] = step.keep_finite(new_lam[site.name], previous)
            if horizon is not None and t >= horizon:
                before = {name: value.detach() for name, value in leaves.items()}
                passed = self._improves(args, kwargs, batch, global_values, before, new_lam, self.check_particles,
                                        self.check_margin)
                moving = passed if moving is None else moving & passed  # a datapoint that fails stops there
                new_lam = {name: torch.where(moving, value, before[name]) for name, value in new_lam.items()}
            lam = new_lam
        if training:
            lam, network_loss = self._averaged_over_iterations(lam, network_loss, num_iterations)
        return Refinement(lam=lam, elbos=elbos, path=path, network_loss=network_loss, masks=masks)

    def _starting_lambda(
        self, args: tuple, kwargs: dict, batch: Batch, global_values: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """lambda_0 of every local site, ``(batch, 2 * size)``, where the refinement starts: ``init_loc`` and
        ``init_scale`` here. A subclass may compute it from the data (with a graph: the networks' surrogate loss then
        also holds the ELBO at lambda_0, see :meth:`_add_elbo_of`)."""
        return self._initial_lambda(len(batch))

    @staticmethod
    def _add_elbo_of(
        lam: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], network_loss: torch.Tensor | None
    ) -> torch.Tensor:
        """The networks' surrogate loss with the ELBO at ``lam`` (an updated estimate, or a learned lambda_0) added:
        ``-<grad, lam>`` per datapoint, whose gradient with respect to the networks is that of the ELBO at ``lam``
        (inner gradients detached)."""
        term = sum((grads[name] * value).sum(-1) for name, value in lam.items())
        return -term if network_loss is None else network_loss - term

    @staticmethod
    def _averaged_over_iterations(
        lam: dict[str, torch.Tensor], network_loss: torch.Tensor | None, num_iterations: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """For training: the final ELBO, scored by the outer loss, counts 1/K towards the networks' averaged
        objective, and the surrogate loss of the other iterations is averaged alike; the model sees the same values
        (this only scales the gradient that reaches the networks)."""
        lam = {name: value.detach() + (value - value.detach()) / num_iterations for name, value in lam.items()}
        return lam, None if network_loss is None else network_loss / num_iterations

    def _update(self, net: GatedUpdate, previous: torch.Tensor, grad: torch.Tensor, projected, errors) -> torch.Tensor:
        """One site's update from its current lambda, the encoded inputs and the data's projection (or None)."""
        inputs = [previous]
        if "gradient" in self.encode:
            inputs.append(encode_gradient(self.gradient_encoding, grad))
        if "errors" in self.encode:
            inputs.append(errors)
        return net(torch.cat(inputs, dim=-1), previous, projected)
