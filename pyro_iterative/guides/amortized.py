"""AmortizedGuide: the standard VAE inference model, one encoder pass from the data to q(z|x).

The baseline that iterative amortized inference is measured against. Site handling, global latents,
plates, inspection and serialization are shared with the other guides (:mod:`pyro_iterative.guides.base`);
this module holds only the encoder.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..inference.batch import Batch
from ..inference.clipping import RunningMedianClip
from ..inference.cost import ModelPasses
from ..inference.encodings import encode_data
from ..inference.networks import DEFAULT_HIDDEN_LAYERS, auto_width, mlp, shrink_output
from ..inference.parameters import initial_lambda
from ..inference.sites import SiteLayout
from .base import LocalGuide, Refinement

__all__ = [
    "AmortizedGuide",
]


class AmortizedGuide(LocalGuide):
    """The standard amortized encoder: one network maps a datapoint's observations to q for every local site.

    The encoder (an ELU MLP) reads the observed values of each datapoint (every observed site in the
    data plate, flattened) and outputs, in one pass, the location and log-scale of a diagonal Normal in
    unconstrained space for every local latent site. It is trained by the outer ELBO like any Pyro guide.

    Usage::

        guide = AmortizedGuide(model, hidden_sizes=(512, 512), observe=lambda idx, x, **kw: x[idx])
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        guide.elbo_trajectory(x_test)   # shape (1, batch): the encoder's ELBO

    Without ``observe`` the guide reads the observations by running the model forward once per call
    (no backward pass); :meth:`inference_cost` counts it.

    :param callable model: a Pyro model with its datapoints in a ``pyro.plate``.
    :param hidden_sizes: widths of the encoder's hidden ELU layers; by default two layers of
        :func:`~pyro_iterative.inference.networks.auto_width` of what the encoder reads and writes.
    :param str data_encoding: how the encoder reads the observed values, a name from
        :data:`~pyro_iterative.inference.encodings.DATA_ENCODINGS` (default ``"symlog"``; ``"none"``: as they are).
    :param bool small_init: start with a zero output layer whose bias is lambda_0, so that a new encoder's q is
        ``init_loc``/``init_scale`` whatever the data (``False``: PyTorch's default initialisation).
    :param clip_gradient: in training, each datapoint's gradient with respect to the encoder's output is clipped to
        this many times the running median of recent batches' median gradient norms
        (:class:`~pyro_iterative.inference.clipping.RunningMedianClip`), so that gradients far above their recent size
        (a few datapoints, or a batch whose gradients have started to grow) cannot swing the encoder's outputs under
        Adam; the model's gradient and every inference result are unchanged.
        ``None``: the plain ELBO gradient, as in a textbook VAE and in the records made before it became the default.
        On the model zoo it removed the loss spikes of a Gamma-Poisson model at Adam 3e-3 (11,246x to 2.1x here, and
        from 121,907x to 9.6x in :class:`~pyro_iterative.guides.semi_amortized.SemiAmortizedGuide`) and raised this
        guide's ELBO there by 159 nats; elsewhere it moved by 0.22 nats or less (``docs/defaults.md``).
    :param kwargs: ``plate_name``, ``num_particles``, ``init_loc``, ``init_scale``, ``global_init_scale``,
        ``create_plates``, ``observe``; see :class:`~pyro_iterative.guides.base.LocalGuide`.
    """

    def __init__(
        self, model: Callable, *, hidden_sizes: Sequence[int] | None = None, data_encoding: str = "symlog",
        small_init: bool = False, clip_gradient: float | None = 3.0, **kwargs,
    ) -> None:
        encode_data(data_encoding, torch.zeros(1))  # validates the name
        clip = None if clip_gradient is None else RunningMedianClip(clip_gradient)  # validates the factor
        super().__init__(model, **kwargs)
        self.clip_gradient = clip_gradient
        self._clip_encoder_gradient = clip
        self.hidden_sizes = None if hidden_sizes is None else tuple(hidden_sizes)
        self.data_encoding = data_encoding
        self.small_init = bool(small_init)

    @classmethod
    def build_encoder(cls, layout: SiteLayout, hidden_sizes: Sequence[int]) -> nn.Sequential:
        """The encoder this guide builds for ``layout``: an ELU MLP from the observed values to every site's lambda.

        Public so that an encoder can be sized without running the model
        (:func:`~pyro_iterative.matching.matched_amortized_guide` counts its parameters).

        Usage::

            sum(p.numel() for p in AmortizedGuide.build_encoder(guide.layout, (256, 256)).parameters())
        """
        if layout.data_size == 0:
            raise ValueError(
                f"{cls.__name__} encodes the observations inside the data plate '{layout.plate_name}', "
                "and the model observes nothing there; observe the data inside that plate."
            )
        return mlp(layout.data_size, tuple(hidden_sizes), sum(2 * site.size for site in layout.local_sites))

    def _setup_networks(self, layout: SiteLayout) -> None:
        widths = sum(2 * site.size for site in layout.local_sites)
        hidden = self.hidden_sizes or (auto_width(layout.data_size + widths),) * DEFAULT_HIDDEN_LAYERS
        self.hidden_sizes = tuple(hidden)
        # A plain nn.Sequential: reading the attribute registers its parameters with Pyro (pyro.module).
        self.encoder = self.build_encoder(layout, hidden)
        if self.small_init:
            start = torch.cat([lam[0] for lam in initial_lambda(layout, 1, torch.zeros(()), self.init_loc,
                                                               self.init_scale).values()])
            shrink_output(self.encoder[-1], bias=start)

    def _encode(
        self, args: tuple, kwargs: dict, batch: Batch, global_values: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """lambda for every local site, ``(batch, 2 * size)``, from one pass of the encoder."""
        return self._lambda_from_encoder(self.encoder, self.data_encoding, self._clip_encoder_gradient, args, kwargs,
                                         batch, global_values)

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
        if num_iterations:
            raise ValueError(f"{type(self).__name__} maps the data to q in one pass; num_iterations does not apply.")
        lam, masks = self._encode_with_masks(args, kwargs, batch, global_values)
        return Refinement(lam=lam, masks=masks)

    def _encode_with_masks(
        self, args: tuple, kwargs: dict, batch: Batch, global_values: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """lambda, and the masks of masked local sites where the encoder read them from a model pass of its own
        (``None``: it did not; the guide then reads them itself)."""
        return self._encode(args, kwargs, batch, global_values), None

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """No backward pass; one forward pass to read the observations unless ``observe`` was given, and one to read
        the masks of a model that masks local sites."""
        return ModelPasses(forward=self._reads_data_by_running_the_model() + self._reads_masks_by_running_the_model(),
                           backward=0)
