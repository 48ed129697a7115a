"""The machinery shared by every amortized guide of this package: :class:`LocalGuide`.

A :class:`LocalGuide` is a Pyro :class:`~pyro.infer.autoguide.AutoGuide` whose latent sites split into

- *local* sites, inside the data plate: q is a diagonal Normal in unconstrained space, pushed through
  ``biject_to(support)``, whose per-datapoint parameters lambda are chosen by the subclass (an encoder,
  a learned iterative optimizer, gradient steps...);
- *global* sites, outside it: ordinary learnable mean-field Normals from Pyro's own
  :class:`~pyro.infer.autoguide.AutoNormal`, sampled once per call.

This module holds site handling, plates and subsampling, sampling the final q, the public refinement
(:meth:`LocalGuide.refine`, returning a :class:`LocalInference`), inspection
(:meth:`LocalGuide.elbo_trajectory`, :meth:`LocalGuide.get_posterior`, :meth:`LocalGuide.median`) and
serialization. How lambda is computed lives in the subclasses (e.g. :mod:`pyro_iterative.guides.iterative`);
the ELBO and its gradient live in :mod:`pyro_iterative.inference`.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide, AutoNormal
from pyro.infer.autoguide.initialization import init_to_feasible
from pyro.poutine.util import site_is_subsample

from ..inference.batch import Batch, locate_batch
from ..inference.cost import ModelPasses
from ..inference.encodings import encode_data
from ..inference.gradient import ELBOGradient
from ..inference.inner_elbo import InnerELBO, can_draw_pairs, check_observations, latent_masks
from ..inference.parameters import LocalParams, initial_lambda, local_params
from ..inference.sites import SiteLayout, discover_sites
from ..inference.step_test import improves

__all__ = [
    "LocalGuide",
    "LocalInference",
    "Refinement",
    "score_with_common_noise",
]


@dataclass
class Refinement:
    """What a subclass's :meth:`LocalGuide._refine` returns.

    :ivar lam: per local site, the final lambda as ``(batch, 2 * size)``: locations, then log-scales.
    :ivar elbos: the ``(batch,)`` ELBO estimates at the intermediate lambdas the method evaluated
        (empty for a one-shot encoder); the ELBO at the final lambda is added by the caller.
    :ivar path: when recording, the intermediate lambdas themselves, one dict per entry of ``elbos``.
    :ivar network_loss: ``(batch,)`` surrogate loss for the inference networks beyond the final ELBO,
        or ``None``. Only its gradient is used: it enters the guide as a zero-valued factor.
    :ivar masks: the ``(batch,)`` masks of the local sites the model masks (read from a model trace of the batch
        with :func:`~pyro_iterative.inference.inner_elbo.latent_masks`), or ``None`` when the method ran no model pass
        that gave them (the guide then runs one to read them, for models that mask local sites).
    """

    lam: dict[str, torch.Tensor]
    elbos: list[torch.Tensor] = field(default_factory=list)
    path: list[dict[str, torch.Tensor]] = field(default_factory=list)
    network_loss: torch.Tensor | None = None
    masks: dict[str, torch.Tensor] | None = None


def score_with_common_noise(
    inner: InnerELBO, args: tuple, kwargs: dict, inference: "LocalInference", lams: list[dict[str, torch.Tensor]]
) -> torch.Tensor:
    """``(len(lams), batch)`` ELBO estimates of several lambdas from the same random draws (common random numbers).

    One seed is drawn from torch's generator (so the result is reproducible under a seed), and every lambda is
    scored with the generator reset to it: a reparameterized sample is then the same function of lambda for every
    row, and the differences between rows carry far less noise than independent estimates would.

    Usage::

        inference = guide.refine(x, record=True)
        rows = score_with_common_noise(InnerELBO(model, guide.layout, 50), (x,), {}, inference, inference.lams)
    """
    seed = int(torch.randint(0, 2**62, ()))
    like = next(iter(inference.lam.values()))
    devices = [like.device] if like.device.type == "cuda" else []
    rows = []
    for lam in lams:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            rows.append(inner(args, kwargs, inference.params(lam), inference.batch, inference.global_values)[0])
    return torch.stack(rows)


@dataclass(frozen=True)
class LocalInference:
    """A guide's inference for one batch, as :meth:`LocalGuide.refine` returns it.

    :ivar layout: the model's sites.
    :ivar batch: the datapoints of the call.
    :ivar global_values: the values of the global latents the refinement was run at (one sample from the
        guide's global posterior; empty without global sites).
    :ivar refinement: what the guide's method returned: the final lambda and, when recording, the
        intermediate lambdas and their ELBOs.

    Usage::

        inference = guide.refine(x_test, record=True)
        inference.lams                  # lambda_0, ..., lambda_K, one dict of (batch, 2 * size) per step
        inference.posterior()["z"]      # the final q of site z
    """

    layout: SiteLayout
    batch: Batch
    global_values: dict[str, torch.Tensor]
    refinement: Refinement

    @property
    def lam(self) -> dict[str, torch.Tensor]:
        """The final lambda of every local site, ``(batch, 2 * size)``."""
        return self.refinement.lam

    @property
    def lams(self) -> list[dict[str, torch.Tensor]]:
        """Every lambda visited, the final one last (only the final one unless refined with ``record=True``)."""
        return self.refinement.path + [self.refinement.lam]

    def params(self, lam: dict[str, torch.Tensor] | None = None) -> LocalParams:
        """q's ``(loc, scale)`` per local site at ``lam`` (default: the final lambda)."""
        return local_params(self.layout, self.lam if lam is None else lam)

    def posterior(self, lam: dict[str, torch.Tensor] | None = None) -> dict[str, dist.Distribution]:
        """q of every local site at ``lam`` (default: the final lambda), in the site's constrained space."""
        params = self.params(lam)
        return {site.name: site.distribution(*params[site.name]) for site in self.layout.local_sites}


def _keep_observed(msg: dict) -> bool:
    # Like AutoGuide's prototype filter, but observed sites are kept: they locate the data plate.
    return msg["type"] != "sample" or site_is_subsample(msg)


class LocalGuide(AutoGuide):
    """Base class for guides that infer the local latents of each datapoint and learn the global ones.

    Subclasses implement :meth:`_setup_networks`, :meth:`_refine` and :meth:`inference_cost`; this class
    does the rest, so every subclass works with Pyro's ``SVI`` and stock ELBOs, ``Predictive``, model-side
    subsampling, constrained latents and ``torch.save``, and satisfies
    :class:`~pyro_iterative.guides.protocol.TrainableGuide`. A subclass that refines lambda by gradient steps
    takes each step with :func:`~pyro_iterative.inference.gradient.elbo_gradient` and passes it through
    :meth:`_count_nonfinite`.

    Usage (a new inference method in a few lines: q from a linear map of the data)::

        class LinearGuide(LocalGuide):
            def _setup_networks(self, layout):
                self.net = torch.nn.Linear(layout.data_size, sum(2 * s.size for s in layout.local_sites))

            def _refine(self, args, kwargs, batch, global_values, *, num_iterations=None, record=False):
                net = self.net  # read outside any poutine.block, so that SVI sees its parameters
                out = net(self._read_data(args, kwargs, batch, global_values))
                sizes = [2 * s.size for s in self.layout.local_sites]
                return Refinement(lam=dict(zip([s.name for s in self.layout.local_sites], out.split(sizes, -1))))

            def inference_cost(self, num_iterations=None):
                return ModelPasses(forward=1, backward=0)

        svi = SVI(model, LinearGuide(model), pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    :param callable model: a Pyro model with its datapoints in a ``pyro.plate``.
    :param str plate_name: the data plate; by default the outermost plate holding every observed site.
    :param int num_particles: samples per datapoint in the ELBO the guide evaluates internally.
    :param float init_loc: initial unconstrained location of q (lambda_0).
    :param float init_scale: initial unconstrained scale of q (lambda_0).
    :param float global_init_scale: initial scale of the global sites' AutoNormal.
    :param callable global_init_loc_fn: initial location of the global sites (an ``init_loc_fn`` of
        Pyro's autoguides, e.g. ``init_to_median`` or ``init_to_value(values=...)``; default ``init_to_feasible``).
    :param callable create_plates: as for Pyro's AutoGuide: a function of the model's arguments that
        returns the model's plates (for example the data plate with its ``subsample=``). Without it
        the guide asks the model which datapoints it draws and reuses them.
    :param callable observe: optional ``observe(indices, *args, **kwargs)`` returning the observed values
        of the datapoints ``indices`` as a ``(batch, data_size)`` tensor, in the order of the observed
        sites. Guides that read the data before any ELBO evaluation (encoders) otherwise run the model
        forward once to read it; e.g. ``observe=lambda idx, x, **kw: x[idx]`` for the bundled models.
    :param bool fast_path: evaluate the internal ELBO on the fast path (default), which scores the model
        as it runs instead of building Pyro traces; ``False`` takes the general path through
        ``poutine.trace``/``poutine.replay``. Both give the same values from the same random draws
        (see :mod:`pyro_iterative.inference.inner_elbo`); the general path is there to check the fast one.
    :param antithetic: draw the internal ELBO's particles in antithetic pairs (a draw and its mirror image about
        q's location; see :class:`~pyro_iterative.inference.inner_elbo.InnerELBO`): ``True`` needs an even
        ``num_particles`` and a model without enumerated sites; ``None`` draws pairs wherever they can be drawn (an
        even ``num_particles``, the fast path, no enumerated site) and independent particles elsewhere. Off by default
        here; :class:`~pyro_iterative.guides.iterative.IterativeGuide` draws one pair by default (``None`` with two
        particles; measured on the model zoo, ``docs/defaults.md``).
    """

    _prototype_hide_fn = staticmethod(_keep_observed)

    def __init__(
        self,
        model: Callable,
        *,
        plate_name: str | None = None,
        num_particles: int = 1,
        init_loc: float = 0.0,
        init_scale: float = 1.0,
        global_init_scale: float = 0.1,
        global_init_loc_fn: Callable = init_to_feasible,
        create_plates: Callable | None = None,
        observe: Callable | None = None,
        fast_path: bool = True,
        antithetic: bool | None = False,
    ) -> None:
        if not init_scale > 0 or not global_init_scale > 0:
            raise ValueError(
                f"init_scale and global_init_scale must be positive, got {init_scale} and {global_init_scale}."
            )
        super().__init__(model, create_plates=create_plates)
        self.plate_name = plate_name
        self.observe = observe
        self.init_loc = float(init_loc)
        self.init_scale = float(init_scale)
        self.global_init_scale = float(global_init_scale)
        self.global_init_loc_fn = global_init_loc_fn
        self.layout: SiteLayout | None = None
        self.global_guide: AutoNormal | None = None  # built with the prototype when the model has global sites
        self.fast_path = bool(fast_path)
        self.antithetic = None if antithetic is None else bool(antithetic)
        self.num_particles = num_particles  # validated by the setter
        #: datapoint-iterations whose ELBO or its gradient was not finite (they kept their previous lambda)
        self.nonfinite_gradients = 0
        self._testers: dict[int, InnerELBO] = {}  # the estimators of :meth:`_improves`, by number of draws

    @property
    def num_particles(self) -> int:
        """Samples per datapoint in the guide's internal ELBO estimates; may be changed after training."""
        return self._num_particles

    @num_particles.setter
    def num_particles(self, value: int) -> None:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"num_particles must be a positive integer, got {value!r}.")
        if self.antithetic is True and value % 2:
            raise ValueError(f"antithetic=True draws the particles in pairs: num_particles must be even, got {value}; "
                             "for an odd number pass antithetic=False.")
        self._num_particles = value
        if self.layout is not None:
            self._inner_elbo = self._build_inner_elbo(value)

    def _build_inner_elbo(self, num_particles: int) -> InnerELBO:
        return InnerELBO(self.model, self.layout, num_particles, fast=self.fast_path,
                         antithetic=self.pairs_particles(num_particles))

    def pairs_particles(self, num_particles: int | None = None) -> bool:
        """Whether the internal ELBO draws ``num_particles`` (default: the guide's) in antithetic pairs: ``antithetic``
        itself, or for ``antithetic=None`` whether pairs can be drawn (an even number, the fast path, no enumerated
        site; the layout must be set up).

        Usage::

            IterativeGuide(model).setup(x).pairs_particles()   # True on a model without enumerated sites
        """
        num_particles = self.num_particles if num_particles is None else num_particles
        if self.antithetic is not None:
            return self.antithetic
        if self.layout is None:
            raise RuntimeError("pairs_particles() with antithetic=None reads the model's sites: call setup() first.")
        return can_draw_pairs(self.layout, num_particles, self.fast_path)

    # ------------------------------------------------------------------ set-up

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.layout = discover_sites(self.prototype_trace, self.plate_name)
        for name, site in list(self.prototype_trace.nodes.items()):
            if site["type"] == "sample" and site["is_observed"]:
                self.prototype_trace.remove_node(name)  # keep no copy of the data in the guide
        self._inner_elbo = self._build_inner_elbo(self._num_particles)
        #: one particle, plain: the model pass that reads the data or the masks before any ELBO is evaluated
        self._reader = InnerELBO(self.model, self.layout, fast=self.fast_path)
        self.global_guide = None
        if self.layout.global_names:
            global_model = poutine.block(self.model, expose=list(self.layout.global_names))
            self.global_guide = AutoNormal(
                global_model, init_loc_fn=self.global_init_loc_fn, init_scale=self.global_init_scale
            )
            self.global_guide._setup_prototype(*args, **kwargs)
        prototype = self.prototype_trace.nodes[self.layout.local_sites[0].name]["value"]
        self._setup_networks(self.layout)
        for module in self.children():
            if module is not self.global_guide:
                module.to(device=prototype.device, dtype=prototype.dtype)

    def setup(self, *args, **kwargs) -> "LocalGuide":
        """Discover the model's sites and build the networks without running inference.

        Calling the guide does this on its first call; call it yourself before ``load_state_dict``
        on a fresh guide. Returns the guide.

        Usage::

            guide = IterativeGuide(model).setup(x[:2])
            guide.load_state_dict(torch.load("guide.pt"))
        """
        if self.layout is None:
            self._setup_prototype(*args, **kwargs)
        return self

    def _check_prototype(self, part_trace) -> None:
        # Called by the global AutoNormal (whose master this guide is): it must hold only global sites.
        unexpected = {name for name, _ in part_trace.iter_stochastic_nodes()} - set(self.layout.global_names)
        if unexpected:
            raise RuntimeError(f"the global guide saw non-global sites {sorted(unexpected)}")

    def _setup_networks(self, layout: SiteLayout) -> None:
        """Build the subclass's networks for ``layout`` (called once, from the prototype)."""
        raise NotImplementedError

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
        """Compute the final lambda for ``batch`` (the subclass's inference method)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses

    def _initial_lambda(self, batch_size: int) -> dict[str, torch.Tensor]:
        return initial_lambda(self.layout, batch_size, self._parameter_like(), self.init_loc, self.init_scale)

    def _local_params(self, lam: dict[str, torch.Tensor]) -> LocalParams:
        return local_params(self.layout, lam)

    def _observed_data(self, model_trace) -> torch.Tensor:
        """The batch's observed values from a model trace (already checked), one flattened row per datapoint."""
        dim = self.layout.plate.dim
        for site in self.layout.observed_sites:
            node = model_trace.nodes.get(site.name)
            if node is None or not node["is_observed"]:
                now = "absent" if node is None else "latent"
                raise ValueError(
                    f"Site '{site.name}' was observed when this guide was set up but is {now} in this call; "
                    "the networks read the values observed at set-up. Set the guide up on a "
                    f"call where '{site.name}' is latent (guide.setup(...) on unlabelled data), or give every call "
                    "the same observed sites."
                )
        rows = [site.flatten(model_trace.nodes[site.name]["value"], dim) for site in self.layout.observed_sites]
        return self._check_data_width(torch.cat(rows, dim=-1))

    def _check_data_width(self, data: torch.Tensor) -> torch.Tensor:
        if data.shape[-1] != self.layout.data_size:
            raise ValueError(
                f"The model's observed sites now give {data.shape[-1]} values per datapoint, but this guide's networks "
                f"were built for {self.layout.data_size}. Build a new guide for data of this shape."
            )
        return data

    def _count_nonfinite(self, step: ELBOGradient) -> ELBOGradient:
        """Add a step's non-finite datapoints to :attr:`nonfinite_gradients`; return the step."""
        self.nonfinite_gradients += step.nonfinite
        return step

    def _parameter_like(self) -> torch.Tensor:
        return next(self.parameters())

    def _read_data(self, args: tuple, kwargs: dict, batch: Batch, global_values: dict[str, torch.Tensor]):
        """The batch's observed values, ``(batch, data_size)``, before any ELBO has been evaluated."""
        like = self._parameter_like()
        if self.observe is not None:
            data = self.observe(batch.indices, *args, **kwargs)
            if data.dtype == torch.uint8 or not torch.isfinite(data.float()).all():
                raise ValueError(
                    "observe() returned raw uint8 values or NaN/infinite values; return finite floats (uint8 images: "
                    "x.float() / 255)."
                )
            if data.shape != (len(batch), self.layout.data_size):
                raise ValueError(
                    f"observe() returned shape {tuple(data.shape)}; expected (batch, data_size) = "
                    f"({len(batch)}, {self.layout.data_size}), the flattened observed sites of the batch."
                )
            return data.to(like)
        with torch.no_grad():
            params = self._local_params(self._initial_lambda(len(batch)))
            _, model_trace = self._reader.trace(args, kwargs, params, batch, global_values)
        check_observations(model_trace, self.layout)
        return self._observed_data(model_trace).to(like)

    def _lambda_from_encoder(
        self, encoder: Callable, data_encoding: str, clip: Callable | None, args: tuple, kwargs: dict, batch: Batch,
        global_values: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """lambda of every local site, ``(batch, 2 * size)``, from one pass of ``encoder`` over the batch's observed
        values read through ``data_encoding``; ``clip`` (a
        :class:`~pyro_iterative.inference.clipping.RunningMedianClip`, or ``None``) acts on the training gradient of
        the encoder's output. The encoders of :class:`~pyro_iterative.guides.amortized.AmortizedGuide` and
        :class:`~pyro_iterative.guides.encoder_iterative.EncoderIterativeGuide`."""
        outputs = encoder(encode_data(data_encoding, self._read_data(args, kwargs, batch, global_values)))
        if clip is not None:
            outputs = clip(outputs)
        sites = self.layout.local_sites
        return dict(zip((s.name for s in sites), outputs.split([2 * s.size for s in sites], dim=-1)))

    def _improves(
        self, args: tuple, kwargs: dict, batch: Batch, global_values: dict[str, torch.Tensor],
        before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], num_particles: int, margin: float,
    ) -> torch.Tensor:
        """``(batch, 1)``: where the q of lambda ``after`` beats that of ``before`` by ``margin`` standard errors on
        ``num_particles`` fresh draws of common noise (:func:`~pyro_iterative.inference.step_test.improves`). The tests
        of the semi-amortized steps and final check and of the iterative guide's horizon check."""
        tester = self._testers.get(num_particles)
        if tester is None or tester.layout is not self.layout:  # kept, so that it remembers whether it can vectorize
            tester = self._testers[num_particles] = InnerELBO(self.model, self.layout, num_particles,
                                                              fast=self.fast_path)
        with torch.no_grad():
            params = self._local_params(before), self._local_params(after)
        return improves(tester, args, kwargs, *params, batch, global_values, margin).unsqueeze(-1)

    def _reads_data_by_running_the_model(self) -> int:
        """One forward pass (of one particle) to read the data where no ``observe`` was given."""
        return int(self.observe is None)

    #: whether :meth:`_refine` returns the masks of masked local sites (from a model pass it runs anyway)
    _refinement_gives_masks = False

    def _reads_masks_by_running_the_model(self) -> int:
        """One forward pass (of one particle) where the model masks local sites and :meth:`_refine` does not return
        their masks."""
        return int(bool(self.layout is not None and self.layout.masked_names) and not self._refinement_gives_masks)

    def _read_masks(self, args: tuple, kwargs: dict, batch: Batch, global_values: dict[str, torch.Tensor]):
        """The ``(batch,)`` masks of the masked local sites, from one forward pass of the model at lambda_0."""
        with torch.no_grad():
            params = self._local_params(self._initial_lambda(len(batch)))
            _, model_trace = self._reader(args, kwargs, params, batch, global_values)
        return latent_masks(model_trace, self.layout, len(batch))

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """Model (decoder) passes per datapoint this guide spends to produce q for a batch.

        Counts every particle: an internal ELBO estimate with ``num_particles`` samples costs that many passes
        (drawn in one vectorized call or one at a time, the model does the same work).
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ one call

    def _plates_and_batch(self, args: tuple, kwargs: dict) -> tuple[dict[str, pyro.plate], Batch]:
        name = self.layout.plate_name
        if self.create_plates is not None:
            plates = self._create_plates(*args, **kwargs)
            with plates[name] as indices:
                pass
            return plates, Batch(indices, plates[name].size)
        batch = locate_batch(self.model, name, args, kwargs)
        plates = {}
        for frame_name, frame in sorted(self._prototype_frames.items()):
            if frame_name == name:
                plates[name] = batch.plate(self.layout)
            else:
                full_size = frame.full_size or frame.size
                plates[frame_name] = pyro.plate(frame_name, full_size, dim=frame.dim, subsample_size=frame.size)
        self.plates = plates  # read by the global AutoNormal through its master
        return plates, batch

    def _check_call(self) -> None:
        if torch.jit.is_tracing():
            raise NotImplementedError(
                f"{type(self).__name__} cannot run under the PyTorch JIT (JitTrace_ELBO): it takes ELBO gradients "
                "with torch.autograd.grad inside its forward pass, which the tracer cannot record. "
                "Use Trace_ELBO or TraceMeanField_ELBO."
            )

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Sample every latent site of the model from q, given the model's own arguments.

        :return: a dict from site name to sampled value.
        """
        self._check_call()
        if self.layout is None:
            self._setup_prototype(*args, **kwargs)
        plates, batch = self._plates_and_batch(args, kwargs)
        result = self.global_guide(*args, **kwargs) if self.global_guide is not None else {}
        fixed_globals = {name: value.detach() for name, value in result.items()}
        refinement = self._refine(args, kwargs, batch, fixed_globals)
        params = self._local_params(refinement.lam)
        masks = refinement.masks
        if masks is None and self.layout.masked_names:
            masks = self._read_masks(args, kwargs, batch, fixed_globals)
        for site in self.layout.local_sites:
            with ExitStack() as stack:
                for frame in site.frames:
                    stack.enter_context(plates[frame.name])
                if masks and site.name in masks:  # where the model masks the site, q is masked alike
                    mask = masks[site.name]
                    mask = mask.reshape(mask.shape + (1,) * (-self.layout.plate.dim - 1))
                    stack.enter_context(poutine.mask(mask=mask))
                result[site.name] = pyro.sample(site.name, site.distribution(*params[site.name]))
        if refinement.network_loss is not None:
            loss = refinement.network_loss
            loss = loss.reshape(loss.shape + (1,) * (-self.layout.plate.dim - 1))
            with plates[self.layout.plate_name]:
                # Zero-valued: it changes no loss value, only adds the networks' own gradient.
                pyro.factor(f"_{type(self).__name__}_network_loss", loss - loss.detach(), has_rsample=True)
        return result

    # ------------------------------------------------------------------ inspection

    def refine(self, *args, num_iterations: int | None = None, record: bool = False, **kwargs) -> LocalInference:
        """Run the guide's inference for the model's arguments, without gradients, and return what it found.

        The public way to look inside a guide: evaluation, local optimization and the figures start from it.
        Global latents are held at one sample from their guide.

        Usage::

            inference = guide.refine(x_test, record=True)
            inference.lam["z"]                       # final (batch, 2 * size) lambda of site z
            [lam["z"] for lam in inference.lams]     # lambda_0 ... lambda_K
            inference.refinement.elbos               # ELBO estimates at lambda_0 ... lambda_{K-1}

        :param num_iterations: override the number of inference iterations for this call.
        :param record: keep the intermediate lambdas and their ELBO estimates.
        """
        self._check_call()
        if self.layout is None:
            self._setup_prototype(*args, **kwargs)
        with torch.no_grad(), poutine.block():
            _, batch = self._plates_and_batch(args, kwargs)
            global_values = self.global_guide(*args, **kwargs) if self.global_guide is not None else {}
            refinement = self._refine(args, kwargs, batch, global_values, num_iterations=num_iterations, record=record)
        return LocalInference(self.layout, batch, global_values, refinement)

    def elbo_trajectory(
        self, *args, num_iterations: int | None = None, num_particles: int | None = None, **kwargs
    ) -> torch.Tensor:
        """Per-datapoint ELBO estimates at every lambda the guide visits, for the model's arguments.

        Row ``t`` holds the ELBO at lambda_t (row 0: the starting point, last row: the final q), one
        column per datapoint, counting the terms inside the data plate (global latents held at one
        sample from their guide).

        By default these are the estimates the guide itself computed while refining (one fresh sample each,
        ``num_particles`` of the guide). With ``num_particles=P`` every lambda is scored anew with ``P`` samples
        and *common random numbers*: the same standard-normal draws for every lambda, so that differences between
        iterations are not buried in Monte-Carlo noise (a 0.1-nat step is resolved where independent draws give
        nats of noise).

        Usage::

            traj = guide.elbo_trajectory(x_test)                      # (K + 1, batch)
            traj.mean(1)                                              # mean ELBO per inference iteration
            guide.elbo_trajectory(x_test, num_particles=50).mean(1)   # the same, with common random numbers

        :param num_iterations: override the number of inference iterations for this call.
        :param num_particles: rescore every lambda with this many samples and common random numbers.
        :return: a tensor of shape ``(number of lambdas visited, batch)``.
        """
        inference = self.refine(*args, num_iterations=num_iterations, record=True, **kwargs)
        if num_particles is None:
            with torch.no_grad():
                final, _ = self._inner_elbo(args, kwargs, inference.params(), inference.batch, inference.global_values)
            return torch.stack(inference.refinement.elbos + [final])
        inner = InnerELBO(self.model, self.layout, num_particles, fast=self.fast_path)
        return score_with_common_noise(inner, args, kwargs, inference, inference.lams)

    def get_posterior(self, *args, num_iterations: int | None = None, **kwargs) -> dict[str, dist.Distribution]:
        """The final q of every local site for the model's arguments, in the site's constrained space.

        Usage::

            q = guide.get_posterior(x)["z"]
            q.mean, q.stddev           # for a real-valued site
        """
        return self.refine(*args, num_iterations=num_iterations, **kwargs).posterior()

    def median(self, *args, num_iterations: int | None = None, **kwargs) -> dict[str, torch.Tensor]:
        """Posterior median of every latent: local sites from the final q, global sites from their AutoNormal.

        Usage::

            guide.median(x)["z"]
        """
        params = self.refine(*args, num_iterations=num_iterations, **kwargs).params()
        result = self.global_guide.median(*args, **kwargs) if self.global_guide is not None else {}
        for site in self.layout.local_sites:
            result[site.name] = site.transform(site.unflatten(params[site.name][0]))
        return result

    def count_inference_parameters(self) -> int:
        """Parameters of the guide's inference networks (its global sites' AutoNormal excluded).

        Usage::

            IterativeGuide(model).setup(x).count_inference_parameters()
        """
        excluded = {id(p) for p in self.global_guide.parameters()} if self.global_guide is not None else set()
        return sum(p.numel() for p in self.parameters() if id(p) not in excluded)

    # ------------------------------------------------------------------ serialization

    def __getstate__(self) -> dict:
        # Unlike AutoGuide, keep the model: the guide runs it at every call. Pickle a copy of the state,
        # never mutate the live guide.
        state = dict(super(AutoGuide, self).__getstate__())
        state["master"] = None
        state.pop("plates", None)
        return state
