"""EncoderIterativeGuide: iterative amortized inference that starts from an encoder's q instead of a fixed lambda_0.

This module holds only the encoder and its place in the training signal: the encoder is
:class:`~pyro_iterative.guides.amortized.AmortizedGuide`'s, and the refinement loop that follows it is
:class:`~pyro_iterative.guides.iterative.IterativeGuide`'s (through its ``_starting_lambda`` hook).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..inference.batch import Batch
from ..inference.clipping import RunningMedianClip
from ..inference.cost import ModelPasses
from ..inference.networks import DEFAULT_HIDDEN_LAYERS, auto_width, shrink_output
from ..inference.parameters import initial_lambda
from ..inference.sites import SiteLayout
from .amortized import AmortizedGuide
from .iterative import IterativeGuide

__all__ = [
    "EncoderIterativeGuide",
]


class EncoderIterativeGuide(IterativeGuide):
    """Iterative amortized inference from an encoder's estimate: an encoder gives lambda_0, update networks refine it.

    For every datapoint, an encoder (the ELU MLP of :class:`~pyro_iterative.guides.amortized.AmortizedGuide`) reads
    the observed values and outputs lambda_0 = (loc, log-scale) of every local site; the learned gated updates of
    :class:`~pyro_iterative.guides.iterative.IterativeGuide` then refine it ``num_iterations`` times from ELBO
    gradients, exactly as there. The encoder does the bulk of the work in one pass; the updates correct what it
    cannot (the amortization gap), at one forward and backward pass of the model each.

    Training, through Pyro's stock losses: the model's and the global sites' parameters get the gradient of the final
    estimate's ELBO only; the update networks get exactly IterativeGuide's signal, the ELBO averaged over the ``K =
    num_iterations`` updated estimates (inner gradients detached, each update trained one step at a time); the encoder
    gets the gradient of the ELBO at its own output lambda_0, through the surrogate ``-<grad_0, lambda_0>`` (``grad_0``:
    the ELBO's gradient at lambda_0, detached), counted in the same averaged loss. The networks' objective is
    therefore ``(ELBO(lambda_0) + ELBO(lambda_1) + ... + ELBO(lambda_K)) / K``: the update networks' gradient is
    IterativeGuide's, and the encoder's is ``1 / K`` times the gradient of ``ELBO(lambda_0)`` (no gradient reaches the
    encoder through the updates, whose inputs are detached as in IterativeGuide).

    Usage::

        guide = EncoderIterativeGuide(model, num_iterations=2, observe=lambda idx, x, **kw: x[idx])
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        for step in range(num_steps):
            svi.step(x_batch)
        guide.elbo_trajectory(x_test).mean(1)   # mean ELBO of the encoder's q, then after 1 and 2 updates

    Without ``observe`` the encoder reads the observations by running the model forward once per call (no backward
    pass), as AmortizedGuide does; :meth:`inference_cost` counts it.

    :param callable model: a Pyro model with its datapoints in a ``pyro.plate``; local latents and observations
        inside it, global latents outside it.
    :param encoder_hidden_sizes: widths of the encoder's hidden ELU layers; by default two layers of
        :func:`~pyro_iterative.inference.networks.auto_width` of what the encoder reads and writes, as for
        AmortizedGuide.
    :param clip_gradient: in training, each datapoint's gradient with respect to the encoder's output lambda_0 is
        clipped to this many times the running median of recent batches' median gradient norms, as in
        :class:`~pyro_iterative.guides.amortized.AmortizedGuide`
        (:class:`~pyro_iterative.inference.clipping.RunningMedianClip`); the update networks' and the model's gradients
        and every inference result are unchanged. ``None``: the plain gradient, as in the records made before it
        became the default. On a Gamma-Poisson model of the model zoo at Adam 3e-3 (seed 1) the encoder without it
        blew up (a loss spike of 8.5 million times the running median; ``docs/defaults.md``).
    :param gate_bias: the update networks' gates' initial bias, as in IterativeGuide; PyTorch's initialisation
        (``None``) by default here: starting the gates near 1 (IterativeGuide's default, 2.0) was a trade for this
        guide on the model zoo (higher on 7 of 16 cells; +19.3 nats on the Gamma-Poisson model at Adam 1e-3, -13.8 at
        3e-3, -2.3 on MNIST at 3e-3; ``docs/defaults.md``), so it was not made its default.
    :param kwargs: the options of :class:`~pyro_iterative.guides.iterative.IterativeGuide`: ``num_iterations``,
        ``hidden_sizes`` (of the update networks), ``encode``, ``gradient_encoding``, ``data_encoding`` (also how the
        encoder reads the data), ``small_init`` (also the encoder's: a zero output layer whose bias is lambda_0 of
        ``init_loc``/``init_scale``, so that a new guide starts where IterativeGuide starts), ``highway``,
        ``num_particles``, ``low_memory``, ``horizon_check`` (on: iterations past the trained number are checked at
        inference, as there; the records of this guide were made at K, where it changes nothing), and those of
        :class:`~pyro_iterative.guides.base.LocalGuide` (``observe``).
    """

    def __init__(
        self, model: Callable, *, encoder_hidden_sizes: Sequence[int] | None = None,
        clip_gradient: float | None = 3.0, gate_bias: float | None = None, **kwargs,
    ) -> None:
        clip = None if clip_gradient is None else RunningMedianClip(clip_gradient)  # validates the factor
        super().__init__(model, gate_bias=gate_bias, **kwargs)
        self.encoder_hidden_sizes = None if encoder_hidden_sizes is None else tuple(encoder_hidden_sizes)
        self.clip_gradient = clip_gradient
        self._clip_encoder_gradient = clip

    def build_encoder(self, layout: SiteLayout, hidden_sizes: Sequence[int] | None = None) -> torch.nn.Sequential:
        """The encoder this guide builds for ``layout``: AmortizedGuide's, with this guide's ``small_init``.

        Public so that the encoder can be sized without running the model
        (:func:`~pyro_iterative.matching.matched_iterative_guide` counts its parameters).

        Usage::

            sum(p.numel() for p in guide.build_encoder(guide.layout, (256, 256)).parameters())

        :param hidden_sizes: the hidden widths (default: the guide's ``encoder_hidden_sizes``, or the automatic ones).
        """
        if layout.data_size == 0:
            raise ValueError(
                f"{type(self).__name__} encodes the observations inside the data plate '{layout.plate_name}', "
                "and the model observes nothing there; observe the data inside that plate, or use IterativeGuide."
            )
        widths = sum(2 * site.size for site in layout.local_sites)
        hidden = tuple(hidden_sizes or self.encoder_hidden_sizes or ())
        hidden = hidden or (auto_width(layout.data_size + widths),) * DEFAULT_HIDDEN_LAYERS
        encoder = AmortizedGuide.build_encoder(layout, hidden)
        if self.small_init:
            start = initial_lambda(layout, 1, torch.zeros(()), self.init_loc, self.init_scale)
            shrink_output(encoder[-1], bias=torch.cat([lam[0] for lam in start.values()]))
        return encoder

    def _setup_networks(self, layout: SiteLayout) -> None:
        super()._setup_networks(layout)
        # A plain nn.Sequential: reading the attribute registers its parameters with Pyro (pyro.module).
        self.encoder = self.build_encoder(layout)

    def _starting_lambda(
        self, args: tuple, kwargs: dict, batch: Batch, global_values: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """lambda_0 for every local site, ``(batch, 2 * size)``, from one pass of the encoder (with its graph when
        training: the refinement then adds its ELBO to the networks' surrogate loss)."""
        encoder = self.encoder  # read here, outside any poutine.block, so that SVI sees its parameters
        return self._lambda_from_encoder(encoder, self.data_encoding, self._clip_encoder_gradient, args, kwargs, batch,
                                         global_values)

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """IterativeGuide's ``num_iterations`` forward and backward passes per datapoint (with its checks past the
        trained number of iterations), and one forward pass to read the data for the encoder unless ``observe`` was
        given."""
        cost = super().inference_cost(num_iterations)
        return ModelPasses(forward=cost.forward + self._reads_data_by_running_the_model(), backward=cost.backward)
