"""The registries of a comparison: every method and every model, declared once as a spec.

A :class:`MethodSpec` says how a method's guide is built for a run (at matched size), what its label is,
which run options change it and which guide infers q on new data; a :class:`ModelSpec` says how a bundled
model is built and what its data need (binarization, a file loader, extra metrics, which figures apply).
:data:`METHODS` and :data:`MODELS` hold them; the command line generates its choices and help from them,
and nothing else in the package dispatches on a method's or model's name. Data sets are registered in
:mod:`pyro_iterative.experiments.datasets`; the settings of a run are
:class:`~pyro_iterative.experiments.config.RunConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generic, Iterator, TypeVar

import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO

from .. import models
from ..data.arrays import load_array
from ..data.chorales import load_sequences, nan_padded
from ..data.corpora import load_counts
from ..guides.amortized import AmortizedGuide
from ..guides.base import LocalGuide
from ..guides.encoder_iterative import EncoderIterativeGuide
from ..guides.iterative import IterativeGuide
from ..guides.optimizing import OptimizingGuide
from ..guides.per_datapoint import PerDatapointGuide
from ..guides.protocol import TrainableGuide
from ..guides.semi_amortized import SemiAmortizedGuide
from ..guides.sequence_encoder import SequenceEncoderGuide, SequenceSemiAmortizedGuide
from ..guides.sequential import SequentialIterativeGuide
from ..inference.networks import DEFAULT_GATE_BIAS
from ..matching import matched_amortized_guide, matched_iterative_guide, matched_sequence_encoder

if TYPE_CHECKING:
    from .config import RunConfig

__all__ = [
    "METHODS",
    "MODELS",
    "MethodSpec",
    "ModelSpec",
    "Registry",
    "build_model_and_guide",
    "observe_rows",
]

Spec = TypeVar("Spec")


class Registry(Generic[Spec]):
    """Named specs of one kind, in the order they were registered; unknown names are refused with the choices.

    Usage::

        METHODS["iterative"].label(config)     # "Iterative (K=5)"
        METHODS.names()                        # ("standard", "iterative", "semi_amortized", "per_datapoint", ...)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._specs: dict[str, Spec] = {}

    def register(self, spec: Spec) -> Spec:
        """Add ``spec`` under its ``name``; a name is declared once."""
        if spec.name in self._specs:
            raise ValueError(f"A {self.kind} named '{spec.name}' is already registered.")
        self._specs[spec.name] = spec
        return spec

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._specs)

    def __getitem__(self, name: str) -> Spec:
        if name not in self._specs:
            raise ValueError(f"Unknown {self.kind} '{name}'; choose one of {', '.join(self._specs)}.")
        return self._specs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[Spec]:
        return iter(self._specs.values())


def observe_rows(indices: torch.Tensor, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``observe=`` for the bundled models, which are called as ``model(x, subsample_size=...)``.

    Usage::

        AmortizedGuide(model, observe=observe_rows)
    """
    return x[indices].reshape(len(indices), -1)


def _observe_all_but_last(indices: torch.Tensor, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    # Rows whose last column is not observed by a sample site (the labels of SemiSupervisedVAE).
    return x[indices, :-1]


def _observe(config: "RunConfig") -> Callable:
    return MODELS[config.model].observe


# ------------------------------------------------------------------------------------------------------ methods


@dataclass(frozen=True)
class MethodSpec:
    """A method of the comparison.

    :ivar name: its name on the command line and in metrics.json.
    :ivar label: ``label(config)``, its name in tables and legends.
    :ivar build: ``build(model, x_train, config)``, the guide it trains (set up for ``model(x_train,
        subsample_size=config.batch_size)``), at the parameter count the comparison matches.
    :ivar options: the :class:`~pyro_iterative.experiments.config.RunConfig` fields that change it besides the
        shared ones (data, model, training budget).
    :ivar test_time: ``test_time(model, guide, config)``, the guide that infers q on new data (default: the
        trained guide itself).
    :ivar figures: the report's figures (optimizer comparison, reconstructions, 2-D posterior) show this method's
        guide; one method says so.
    :ivar distributed_note: what a user should know before training it data-parallel, or ``None``.
    """

    name: str
    label: Callable[["RunConfig"], str]
    build: Callable[[Callable, torch.Tensor, "RunConfig"], TrainableGuide]
    options: tuple[str, ...] = ()
    test_time: Callable[[Callable, TrainableGuide, "RunConfig"], LocalGuide] = lambda model, guide, config: guide
    figures: bool = False
    distributed_note: str | None = None


def _probe(x: torch.Tensor, config: "RunConfig") -> dict:
    return {"subsample_size": min(config.batch_size, len(x))}


def _iterative_guide(model: Callable, config: "RunConfig") -> IterativeGuide | SequentialIterativeGuide:
    """The iterative guide every network-based method is sized against: two plain hidden layers of ``hidden`` units
    (for a sequence model, one such network shared by every time step)."""
    guide_class = SequentialIterativeGuide if MODELS[config.model].sequential else IterativeGuide
    return guide_class(model, num_iterations=config.iterations, hidden_sizes=(config.hidden,) * 2,
                       encode=config.encode, **_update_options(config), **_gate_options(config))


def _update_options(config: "RunConfig") -> dict:
    """The iterative guides' settings that the run fixes: normalised hidden layers, and one antithetic pair of particles
    (independent ones on a model with enumerated sites, where pairs cannot be drawn) or one particle."""
    return {"normalize_hidden": config.normalize_hidden, "num_particles": 2 if config.antithetic else 1,
            "antithetic": None if config.antithetic else False}


def _gate_options(config: "RunConfig") -> dict:
    """The iterative method's gates: their initial bias near 1 (IterativeGuide's default), or PyTorch's start."""
    return {"gate_bias": DEFAULT_GATE_BIAS if config.gate_init else None}


def _encoder_options(config: "RunConfig") -> dict:
    """The encoders' setting that the run fixes: their gradient clip (the guides' default), or none."""
    return {} if config.clip_encoder_gradient else {"clip_gradient": None}


def _refuse_sequential(config: "RunConfig", method: str) -> None:
    if MODELS[config.model].sequential:
        raise ValueError(f"The method '{method}' is built for models of independent datapoints; for --model "
                         f"{config.model} choose from {', '.join(MODELS[config.model].methods)}.")


def _build_iterative(model: Callable, x: torch.Tensor, config: "RunConfig") -> IterativeGuide:
    reference = _iterative_guide(model, config)
    if not config.highway and config.depth == 2:
        return reference.setup(x, **_probe(x, config))
    _refuse_sequential(config, "iterative with --highway or --depth")
    return matched_iterative_guide(
        model, reference, x, num_layers=config.depth, **_probe(x, config),
        guide_options={"num_iterations": config.iterations, "encode": config.encode, "highway": config.highway,
                       **_update_options(config), **_gate_options(config)})


def _build_encoder_iterative(model: Callable, x: torch.Tensor, config: "RunConfig") -> EncoderIterativeGuide:
    _refuse_sequential(config, "encoder_iterative")
    return matched_iterative_guide(
        model, _iterative_guide(model, config), x, guide_class=EncoderIterativeGuide, num_layers=config.depth,
        guide_options={"num_iterations": config.iterations, "encode": config.encode, "highway": config.highway,
                       **_update_options(config), "observe": _observe(config), **_encoder_options(config)},
        **_probe(x, config))


def _build_standard(model: Callable, x: torch.Tensor, config: "RunConfig") -> AmortizedGuide:
    """An encoder as many parameters as the iterative guide's networks (within 5%): ``depth`` equal hidden layers, or
    for a sequence model the deep Markov model's backward GRU and combiner."""
    if MODELS[config.model].sequential:
        return matched_sequence_encoder(model, _iterative_guide(model, config), x, **_probe(x, config))
    return matched_amortized_guide(model, _iterative_guide(model, config), x, num_layers=config.depth,
                                   guide_options={"observe": _observe(config), **_encoder_options(config)},
                                   **_probe(x, config))


def _build_semi_amortized(model: Callable, x: torch.Tensor, config: "RunConfig") -> SemiAmortizedGuide:
    encoder = _build_standard(model, x, config)
    # Its default step rule (adaptive per-datapoint step sizes), as a user gets it: no step size tuned on MNIST.
    options = {} if config.inner_lr is None else {"lr": config.inner_lr}
    # The final check runs at evaluation only ("inference"), so training is the same with or without it.
    options["final_check"] = "inference" if config.final_check else False
    if isinstance(encoder, SequenceEncoderGuide):
        return SequenceSemiAmortizedGuide(model, num_steps=config.iterations, rnn_dim=encoder.rnn_dim,
                                          **options).setup(x, **_probe(x, config))
    return SemiAmortizedGuide(model, num_steps=config.iterations, hidden_sizes=encoder.hidden_sizes,
                              observe=_observe(config), **options, **_encoder_options(config)
                              ).setup(x, **_probe(x, config))


def _build_variational_em(model: Callable, x: torch.Tensor, config: "RunConfig") -> OptimizingGuide:
    """No inference network: each minibatch's q starts at lambda_0 and takes ``iterations`` Adam steps on its ELBO
    (at ``inner_lr``, by default Adam's default step size of this package), then the model takes its step at the
    result."""
    return OptimizingGuide(model, optimizer="adam", lr=config.inner_lr,
                           num_steps=config.iterations).setup(x, **_probe(x, config))


def _build_variational_em_reference(model: Callable, x: torch.Tensor, config: "RunConfig") -> OptimizingGuide:
    """Variational EM with ``reference_steps`` Adam steps per minibatch: what far more inference compute buys."""
    return OptimizingGuide(model, optimizer="adam", lr=config.inner_lr,
                           num_steps=config.reference_steps).setup(x, **_probe(x, config))


def _build_variational_em_warm(model: Callable, x: torch.Tensor, config: "RunConfig") -> OptimizingGuide:
    """Variational EM whose q of each training datapoint resumes where its last minibatch left it."""
    return OptimizingGuide(model, optimizer="adam", lr=config.inner_lr, num_steps=config.iterations,
                           warm_start=True).setup(x, **_probe(x, config))


def _build_per_datapoint(model: Callable, x: torch.Tensor, config: "RunConfig") -> PerDatapointGuide:
    return PerDatapointGuide(model).setup(x, **_probe(x, config))


def _optimizing_at_test_time(model: Callable, guide: TrainableGuide, config: "RunConfig") -> OptimizingGuide:
    return OptimizingGuide(model, optimizer="adam", lr=1e-2, num_steps=config.local_steps)


#: Every method of the comparison, in table order.
METHODS: Registry[MethodSpec] = Registry("method")
METHODS.register(MethodSpec(
    "standard", lambda config: "Standard encoder", _build_standard,
    options=("hidden", "depth", "clip_encoder_gradient"),
))
METHODS.register(MethodSpec(
    "iterative", lambda config: f"Iterative (K={config.iterations})", _build_iterative,
    options=("iterations", "hidden", "encode", "depth", "highway", "normalize_hidden", "antithetic", "gate_init"),
    figures=True,
))
METHODS.register(MethodSpec(
    "encoder_iterative", lambda config: f"Encoder + iterative (K={config.iterations})", _build_encoder_iterative,
    options=("iterations", "hidden", "encode", "depth", "highway", "normalize_hidden", "antithetic",
             "clip_encoder_gradient"),
))
METHODS.register(MethodSpec(
    "semi_amortized", lambda config: f"Semi-amortized (K={config.iterations})", _build_semi_amortized,
    options=("iterations", "hidden", "depth", "inner_lr", "clip_encoder_gradient", "final_check"),
))
METHODS.register(MethodSpec(
    "variational_em", lambda config: f"Variational EM (Adam, {config.iterations} steps)", _build_variational_em,
    options=("iterations", "inner_lr"),
))
METHODS.register(MethodSpec(
    "variational_em_reference", lambda config: f"Variational EM (Adam, {config.reference_steps} steps)",
    _build_variational_em_reference, options=("reference_steps", "inner_lr"),
))
METHODS.register(MethodSpec(
    "variational_em_warm", lambda config: f"Variational EM from stored q (Adam, {config.iterations} steps; "
    f"{config.local_steps} at test)", _build_variational_em_warm, options=("iterations", "inner_lr", "local_steps"),
    test_time=_optimizing_at_test_time,
    distributed_note="variational_em_warm stores q for every training datapoint in each process, and each process "
    "updates only its own minibatches' rows: the copies drift apart, so train it in one process",
))
METHODS.register(MethodSpec(
    "per_datapoint", lambda config: f"Per-datapoint q, updated once per epoch (Adam, {config.local_steps} steps at "
    "test)", _build_per_datapoint,
    options=("local_steps",), test_time=_optimizing_at_test_time,
    distributed_note="per_datapoint stores q for every training datapoint; each process holds the whole table and DDP "
    "averages its (mostly zero) gradient at every step, so it trains correctly but does not scale",
))


# ------------------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """A bundled model of the comparison.

    :ivar name: its name on the command line.
    :ivar description: one line for the command line's help.
    :ivar build: ``build(data_dim, latent_dim, hidden)``, the model.
    :ivar binarize: how its training data are binarized unless the run says otherwise (a name from
        :data:`~pyro_iterative.data.binarization.BINARIZE_MODES`).
    :ivar load_file: reads a user's ``.npy``/``.npz`` file of datapoints for it.
    :ivar images: its observations are pictures (the report draws reconstructions per iteration).
    :ivar posterior_2d: the report draws a 2-D latent version of it with inference paths.
    :ivar extra_metrics: ``extra_metrics(test_elbos, x_eval, log_likelihoods, x_ll)``, more entries for a method's
        metrics (e.g. per-word perplexity), or ``None``.
    :ivar dataset: the data set it runs on unless the run says otherwise (a name from
        :data:`~pyro_iterative.experiments.datasets.DATASETS`).
    :ivar loss: builds the ELBO it trains with (``TraceEnum_ELBO`` for models with enumerated latents).
    :ivar observe: ``observe=`` of the encoder-based guides: the observed values of a batch of its rows.
    :ivar label_site: its enumerated site that is a class label: each method's test accuracy is reported (the argmax
        of :func:`~pyro_iterative.evaluation.discrete_posterior`), on data sets that give test labels.
    :ivar sequential: a model of sequences with one latent site per time step (the sequence guides are used:
        :class:`~pyro_iterative.guides.sequential.SequentialIterativeGuide` and the DMM's inference network).
    :ivar methods: the methods a comparison trains unless the run says otherwise.
    :ivar latent_dim: its latent size unless the run says otherwise.
    :ivar hidden: its hidden width (and the iterative networks') unless the run says otherwise.
    """

    name: str
    description: str
    build: Callable[[int, int, int], torch.nn.Module]
    binarize: str = "none"
    load_file: Callable[[str], torch.Tensor] = load_array
    images: bool = False
    posterior_2d: bool = False
    extra_metrics: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], dict] | None = None
    dataset: str = "mnist5k"
    loss: Callable[[], ELBO] = Trace_ELBO
    observe: Callable[..., torch.Tensor] = observe_rows
    label_site: str | None = None
    sequential: bool = False
    methods: tuple[str, ...] = ("standard", "iterative", "semi_amortized", "variational_em")
    latent_dim: int = 64
    hidden: int = 512


def _enumerated() -> ELBO:
    return TraceEnum_ELBO(max_plate_nesting=1)


def _per_step(test_elbos: torch.Tensor, x_eval: torch.Tensor, ll: torch.Tensor, x_ll: torch.Tensor) -> dict:
    # Nats per time step, as the sequence-model literature reports them: sums over sequences / their real steps.
    steps_eval = models.DMM.nan_padded_lengths(x_eval).sum().item()
    steps_ll = models.DMM.nan_padded_lengths(x_ll).sum().item()
    return {"elbo_per_step": float(test_elbos.sum()) / steps_eval,
            "log_likelihood_per_step": float(ll.sum()) / steps_ll,
            "steps": int(steps_eval), "log_likelihood_steps": int(steps_ll)}


def _perplexities(test_elbos: torch.Tensor, x_eval: torch.Tensor, ll: torch.Tensor, x_ll: torch.Tensor) -> dict:
    # Per-word perplexity bounds from the ELBO and from log p(x), as in the topic-model literature.
    return {"perplexity": float(models.perplexity(test_elbos, x_eval, exclude_coefficient=True)),
            "perplexity_ll": float(models.perplexity(ll, x_ll, exclude_coefficient=True))}


#: Every bundled model of the comparison.
MODELS: Registry[ModelSpec] = Registry("model")
MODELS.register(ModelSpec(
    "vae", "the paper's single-level MNIST VAE",
    lambda data_dim, latent_dim, hidden: models.VAE(data_dim=data_dim, latent_dim=latent_dim,
                                                    hidden_sizes=(hidden, hidden)),
    binarize="dynamic", images=True, posterior_2d=True,
))
MODELS.register(ModelSpec(
    "hierarchical", "its two-level VAE (latents latent_dim and latent_dim // 2, top-down prior)",
    lambda data_dim, latent_dim, hidden: models.HierarchicalVAE(
        data_dim=data_dim, latent_dims=(latent_dim, max(1, latent_dim // 2)), hidden_sizes=(hidden, hidden)),
    binarize="dynamic", images=True,
))
MODELS.register(ModelSpec(
    "gaussian", "a VAE with a Gaussian likelihood, for continuous data",
    lambda data_dim, latent_dim, hidden: models.GaussianVAE(data_dim=data_dim, latent_dim=latent_dim,
                                                            hidden_sizes=(hidden, hidden)),
    images=True,
))
MODELS.register(ModelSpec(
    "bow", "a multinomial bag-of-words model of word counts",
    lambda data_dim, latent_dim, hidden: models.BagOfWords(vocab_size=data_dim, latent_dim=latent_dim,
                                                           hidden_sizes=(hidden,)),
    load_file=load_counts, extra_metrics=_perplexities,
))
MODELS.register(ModelSpec(
    "mixture", "a VAE with a mixture-of-Gaussians prior (10 clusters, summed out by enumeration)",
    lambda data_dim, latent_dim, hidden: models.MixturePriorVAE(data_dim=data_dim, latent_dim=latent_dim,
                                                                num_clusters=10, hidden_sizes=(hidden, hidden)),
    binarize="dynamic", images=True, loss=_enumerated,
))
MODELS.register(ModelSpec(
    "m2", "Kingma et al.'s semi-supervised VAE: the digit label summed out where unknown (300 labels)",
    lambda data_dim, latent_dim, hidden: models.SemiSupervisedVAE(data_dim=data_dim - 1, latent_dim=latent_dim,
                                                                  num_classes=10, hidden_sizes=(hidden, hidden)),
    dataset="mnist5k-labelled", loss=_enumerated, observe=_observe_all_but_last, label_site="y",
))


MODELS.register(ModelSpec(
    "dmm", "Krishnan et al.'s deep Markov model of piano rolls (z of latent_dim, transition hidden, emitter hidden/2)",
    lambda data_dim, latent_dim, hidden: models.DMM(data_dim=data_dim, z_dim=latent_dim, transition_dim=hidden,
                                                    emission_dim=max(1, hidden // 2)),
    dataset="chorales", extra_metrics=_per_step, sequential=True, latent_dim=100, hidden=200,
    load_file=lambda path: nan_padded(*load_sequences(path)),
    methods=("standard", "iterative", "semi_amortized", "variational_em"),
))


def build_model_and_guide(config: "RunConfig", method: str, x_train: torch.Tensor) -> tuple[torch.nn.Module, Callable]:
    """A fresh model (``config.model``, seeded with ``config.seed``) and ``method``'s guide, on ``x_train``'s device.

    Every method starts from the same decoder initialisation; the guides are sized as the comparison matches them.

    Usage::

        model, guide = build_model_and_guide(RunConfig(), "iterative", x_train)
    """
    pyro.set_rng_seed(config.seed)  # every method starts from the same decoder initialisation
    model = MODELS[config.model].build(x_train.shape[-1], config.latent_dim, config.hidden).to(device=x_train.device)
    guide = METHODS[method].build(model, x_train, config)
    return model, guide.to(device=x_train.device)
