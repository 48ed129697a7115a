"""The training engine: one description of an epoch, and the single-process SVI loop that runs it.

:class:`EpochPlan` says what an epoch is, for every training loop of the package: how the data are drawn
(binarization), how many steps of what batch, when a loss is refused, what the epoch's record holds and how
it is logged. :func:`train` runs it with Pyro's ``SVI`` in this process (the model's plate draws each
minibatch) and saves a :class:`~pyro_iterative.experiments.checkpoints.TrainingCheckpoint` after every epoch,
with the random-number state, so that ``resume=True`` finishes with the same numbers as an uninterrupted run.
The same plan runs data-parallel under PyTorch Lightning in :mod:`pyro_iterative.experiments.lightning`.
Which methods and models exist, and what is measured at the end, lives in
:mod:`pyro_iterative.experiments.registry` and :mod:`pyro_iterative.experiments.comparison`.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO, SVI, Trace_ELBO

from ..data.binarization import BINARIZE_MODES, binarize, static_binarize
from ..evaluation import elbo_per_iteration, over_batches
from ..guides.protocol import TrainableGuide
from .checkpoints import TrainingCheckpoint, get_rng_state, set_rng_state

__all__ = [
    "EpochPlan",
    "EpochRecord",
    "TestELBO",
    "TrainingError",
    "best_epoch",
    "nonfinite_count",
    "own_param_store",
    "progress",
    "setup_guide",
    "stopped_early",
    "train",
]


class TrainingError(RuntimeError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


def setup_guide(guide: Callable, x: torch.Tensor, batch_size: int) -> Callable:
    """Build a guide's parameters for the model called as ``model(x, subsample_size=batch_size)``; return the guide.

    A guide of this package (a :class:`~pyro_iterative.guides.protocol.TrainableGuide`) is set up without running
    inference; any other Pyro guide (an autoguide) is called once, blocked and without gradients.

    Usage::

        setup_guide(guide, x_train, 64).load_state_dict(state.guide)
    """
    if isinstance(guide, TrainableGuide):
        return guide.setup(x, subsample_size=batch_size)
    with torch.no_grad(), poutine.block():
        guide(x, subsample_size=batch_size)
    return guide


def nonfinite_count(guide: Callable) -> int:
    """The guide's count of contained non-finite inner gradients (0 for guides outside this package)."""
    return guide.nonfinite_gradients if isinstance(guide, TrainableGuide) else 0


def own_param_store(function: Callable) -> Callable:
    """Run ``function`` with a fresh Pyro param store (a decorator).

    Every method's model has the same Pyro parameter names (``decoder$$$0.weight``...): in one global store
    a new model would be handed the previous method's trained tensors. Each method gets its own store.

    Usage::

        @own_param_store
        def train_one(config, method): ...
    """

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with pyro.get_param_store().scope():
            return function(*args, **kwargs)

    return wrapped


class TestELBO:
    """An ``evaluate()`` for a training run: the mean and standard error of the final q's ELBO on ``x_eval``.

    Evaluated in chunks of 500 datapoints, with its own random stream (seeded ``seed + 1`` at every call, the
    training's stream left as it was), on the device of the model's parameters.

    Usage::

        evaluate = TestELBO(guide, model, x_eval, seed=0)
        mean, standard_error = evaluate()

    :param guide: the guide that infers q on ``x_eval`` (a :class:`~pyro_iterative.guides.base.LocalGuide`, or a
        :class:`~pyro_iterative.guides.per_datapoint.PerDatapointGuide` on its own training data).
    :param model: the model, whose parameters say on which device to evaluate (``None``: where ``x_eval`` is).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, guide: Callable, model: torch.nn.Module | None, x_eval: torch.Tensor, seed: int = 0) -> None:
        self.guide, self.model, self.x_eval, self.seed = guide, model, x_eval, seed

    def __call__(self) -> tuple[float, float]:
        parameter = next(self.model.parameters(), None) if self.model is not None else None
        x = self.x_eval.to(parameter.device) if parameter is not None else self.x_eval
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # evaluation noise does not change the training path
            torch.manual_seed(self.seed + 1)
            estimate = over_batches(lambda chunk: elbo_per_iteration(self.guide, chunk), x, 500)
        return float(estimate.mean[-1]), float(estimate.standard_error[-1])


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of a training run: what the history (in checkpoints and metrics.json) holds per epoch.

    Usage::

        record = EpochRecord(epoch=3, seconds=41.2, train_loss=101.7, test_elbo=-99.8, test_elbo_se=0.6)
        print(record.line(total_epochs=10, nonfinite=0))
        record.as_dict()["test_elbo"]

    :ivar epoch: the epoch's number, from 1.
    :ivar seconds: training seconds up to the end of this epoch (evaluation excluded).
    :ivar train_loss: the epoch's mean training loss, in nats per datapoint.
    :ivar test_elbo: the evaluation's mean ELBO (NaN without an evaluation): on the validation set when the run has
        one, else on the test set.
    :ivar test_elbo_se: its standard error.
    """

    epoch: int
    seconds: float
    train_loss: float
    test_elbo: float
    test_elbo_se: float

    def as_dict(self) -> dict[str, float]:
        """The record as the history stores it."""
        return asdict(self)

    def line(self, total_epochs: int | None, nonfinite: int) -> str:
        """The log line of the epoch (with the count of contained non-finite inner gradients, if any)."""
        return (
            f"epoch {self.epoch:3d}/{total_epochs or '?'}  train loss {self.train_loss:9.3f}  held-out ELBO "
            f"{self.test_elbo:9.3f} ± {self.test_elbo_se:.3f}  ({self.seconds:6.1f} s)"
            + (f"  [{nonfinite} non-finite ELBO gradients contained so far]" if nonfinite else "")
        )


class EpochPlan:
    """What one epoch of training is, for every training loop: data, batching, loss check, record.

    - **data**: :meth:`fixed_data` once per run (``binarize_mode="static"``: one seeded Bernoulli draw; otherwise
      the values as given), then :meth:`epoch_data` every epoch (``"dynamic"``: a fresh Bernoulli draw from the
      given generator, torch's global one by default; otherwise the fixed data);
    - **batching**: :attr:`steps` steps of ``batch_size`` datapoints (the global batch, split evenly across
      processes by :meth:`batch_per_process`);
    - **loss check**: :meth:`check_loss` stops the run at a non-finite loss, naming the epoch and step;
    - **record**: :meth:`record` evaluates (``evaluate()`` returns the test ELBO's mean and standard error) and
      gives the epoch's :class:`EpochRecord`, whose :meth:`EpochRecord.line` is the log line.

    Usage::

        plan = EpochPlan(x_train, epochs=10, batch_size=64, binarize_mode="dynamic", evaluate=evaluate)
        fixed = plan.fixed_data()
        for epoch in range(1, plan.epochs + 1):
            x, losses = plan.epoch_data(fixed), []
            for step in range(plan.steps):
                losses.append(svi.step(x, subsample_size=plan.batch_size) / len(x))
                plan.check_loss(losses[-1], epoch, step + 1, checkpoint)
            print(plan.record(epoch, seconds, losses).line(plan.epochs, 0))

    :param data: the training set, datapoints on dim 0.
    :param epochs: the run's total epochs (``None``: not known, as in a bare Lightning fit).
    :param batch_size: the (global) minibatch size.
    :param binarize_mode: one of :data:`~pyro_iterative.data.binarization.BINARIZE_MODES`.
    :param seed: seeds the static binarization.
    :param evaluate: optional ``evaluate()`` returning the test ELBO's mean and standard error.
    """

    def __init__(
        self,
        data: torch.Tensor,
        *,
        epochs: int | None,
        batch_size: int = 64,
        binarize_mode: str = "dynamic",
        seed: int = 0,
        evaluate: Callable[[], tuple[float, float]] | None = None,
    ) -> None:
        if epochs is not None and (not isinstance(epochs, int) or epochs < 0):
            raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        if binarize_mode not in BINARIZE_MODES:
            raise ValueError(f"Unknown binarization '{binarize_mode}'; choose one of {BINARIZE_MODES}.")
        if not isinstance(data, torch.Tensor) or data.dim() < 1 or len(data) == 0:
            raise ValueError("The training set is empty: pass a non-empty tensor with datapoints on dim 0.")
        self.data = data
        self.epochs = epochs
        self.batch_size = batch_size
        self.binarize_mode = binarize_mode
        self.seed = int(seed)
        self.evaluate = evaluate

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch: ``N // batch_size`` (at least one)."""
        return max(1, len(self.data) // self.batch_size)

    def batch_per_process(self, world: int, shard: int) -> int:
        """The batch each of ``world`` processes takes, checked against its ``shard`` of the data set."""
        if self.batch_size % world:
            raise ValueError(
                f"The global batch size {self.batch_size} does not split evenly across {world} processes; choose a "
                f"multiple of {world} (each process takes batch_size / {world} datapoints)."
            )
        per_process = self.batch_size // world
        if shard < per_process:
            raise ValueError(
                f"Each of the {world} processes gets {shard} of the {len(self.data)} datapoints, fewer than its "
                f"batch of {per_process}: lower the batch size or use more data."
            )
        return per_process

    def fixed_data(self, data: torch.Tensor | None = None) -> torch.Tensor:
        """The data every epoch starts from (``data`` defaults to the training set): a static draw, or as given."""
        data = self.data if data is None else data
        return static_binarize(data, seed=self.seed) if self.binarize_mode == "static" else data

    def epoch_data(self, fixed: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The data of one epoch: a fresh Bernoulli draw from ``fixed`` (``"dynamic"``), or ``fixed`` itself."""
        return binarize(fixed, generator=generator) if self.binarize_mode == "dynamic" else fixed

    def check_loss(self, loss: float, epoch: int, step: int, checkpoint: str | Path | None = None) -> None:
        """Stop the run at a non-finite loss: :class:`TrainingError` naming the epoch, the step and the checkpoint."""
        if not math.isfinite(loss):
            kept = f"the last good checkpoint ({checkpoint})" if checkpoint else "the last good checkpoint"
            raise TrainingError(
                f"Non-finite loss ({loss}) at epoch {epoch}, step {step}; {kept} is kept. Lower the learning rate "
                "or check the data."
            )

    def record(self, epoch: int, seconds: float, losses: Sequence[float]) -> EpochRecord:
        """Evaluate and return the epoch's record; ``losses`` are its steps' losses in nats per datapoint."""
        test_elbo, test_elbo_se = self.evaluate() if self.evaluate is not None else (float("nan"), float("nan"))
        train_loss = sum(losses) / len(losses) if losses else float("nan")
        return EpochRecord(epoch, seconds, train_loss, test_elbo, test_elbo_se)


def train(
    model: torch.nn.Module,
    guide: TrainableGuide,
    x_train: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    binarize_mode: str = "dynamic",
    seed: int = 0,
    evaluate: Callable[[], tuple[float, float]] | None = None,
    checkpoint: str | Path | None = None,
    config: dict | None = None,
    resume: bool = False,
    loss: ELBO | None = None,
    patience: int | None = None,
    best_checkpoint: str | Path | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train ``model`` and ``guide`` with SVI for ``epochs`` epochs of an :class:`EpochPlan`; return the history.

    Each epoch draws the training data (``binarize_mode``: a fresh Bernoulli draw per epoch, one fixed
    draw seeded by ``seed``, or the grey levels), takes ``len(x_train) // batch_size`` SVI steps with Adam, calls
    ``evaluate()`` (returning test ELBO mean and standard error), logs one line and checkpoints.

    Usage::

        history = train(model, guide, x_train, epochs=10, evaluate=lambda: (-100.0, 1.0),
                        checkpoint="runs/a/iterative/checkpoint.pt", config={"method": "iterative"})

    :param checkpoint: where to save after every epoch (atomically); ``None`` saves nothing.
    :param config: stored in the checkpoint; resuming refuses a checkpoint of another configuration.
    :param resume: continue from ``checkpoint`` if it exists (a finished run is returned as it is); a checkpoint of
        the Lightning loop is refused.
    :param loss: the ELBO (default ``Trace_ELBO()``; ``TraceEnum_ELBO`` for models with enumerated latents).
    :param patience: early stopping: end the run once ``evaluate()`` (a validation ELBO) has not risen above its best
        for ``patience`` epochs (:func:`stopped_early`; ``epochs`` is then the most). A resumed run that had stopped
        stays stopped.
    :param best_checkpoint: where to save the epoch of the best ``evaluate()`` so far (atomically; the same
        :class:`~pyro_iterative.experiments.checkpoints.TrainingCheckpoint` as ``checkpoint``); ``None`` saves none.
    :param on_epoch: called with each epoch's :class:`EpochRecord` once it is checkpointed (a study's progress bar).
    :return: one :meth:`EpochRecord.as_dict` per epoch.
    :raises TrainingError: if a loss is not finite (the last good checkpoint is kept).
    """
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}.")
    if patience is not None and (evaluate is None or not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience must be a positive integer and needs an evaluate() to watch, got {patience!r}.")
    plan = EpochPlan(x_train, epochs=epochs, batch_size=batch_size, binarize_mode=binarize_mode, seed=seed,
                     evaluate=evaluate)
    config = dict(config or {})
    fixed = plan.fixed_data()
    setup_guide(guide, x_train, min(batch_size, len(x_train)))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss if loss is not None else Trace_ELBO())
    history, seconds, first_epoch = [], 0.0, 1
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = TrainingCheckpoint.load(checkpoint, config=config, engine="svi")
        model.load_state_dict(state.model)
        guide.load_state_dict(state.guide)
        pyro.clear_param_store()  # the next call registers the loaded tensors
        svi.optim.set_state(state.optim)
        set_rng_state(state.rng)
        history, seconds, first_epoch = state.history, state.seconds, state.epoch + 1
        guide.nonfinite_gradients = state.nonfinite_gradients
        log(f"resumed from {checkpoint} after epoch {state.epoch}")
    show = not quiet and sys.stderr.isatty()
    for epoch in range(first_epoch, epochs + 1):
        if stopped_early(history, patience):
            break
        start = time.perf_counter()
        x, losses = plan.epoch_data(fixed), []
        with progress(plan.steps, f"epoch {epoch}/{epochs}", show) as bar:
            for step in range(plan.steps):
                losses.append(svi.step(x, subsample_size=min(batch_size, len(x))) / len(x))
                plan.check_loss(losses[-1], epoch, step + 1, checkpoint)
                bar.update()
        seconds += time.perf_counter() - start
        record = plan.record(epoch, seconds, losses)
        history.append(record.as_dict())
        if not quiet:
            log(record.line(epochs, guide.nonfinite_gradients))
        state = TrainingCheckpoint(
            config=config, engine="svi", epoch=epoch, model=model.state_dict(), guide=guide.state_dict(),
            optim=svi.optim.get_state(), history=history, seconds=seconds,
            nonfinite_gradients=guide.nonfinite_gradients, rng=get_rng_state(),
        )
        if best_checkpoint is not None and best_epoch(history) == epoch:
            state.save(best_checkpoint)  # before the latest one: a kill in between leaves both consistent
        if checkpoint is not None:
            state.save(checkpoint)
        if on_epoch is not None:
            on_epoch(record)
        if stopped_early(history, patience) and not quiet:
            log(f"stopped early: no better evaluation ELBO for {patience} epochs since epoch {best_epoch(history)}")
    return history


def best_epoch(history: Sequence[dict]) -> int | None:
    """The epoch (from 1) of the highest evaluation ELBO in a training history, the earliest of ties; ``None``
    without any finite one.

    Usage::

        best_epoch([{"epoch": 1, "test_elbo": -101.0}, {"epoch": 2, "test_elbo": -99.5}])   # 2
    """
    finite = [record for record in history if math.isfinite(record["test_elbo"])]
    return max(finite, key=lambda record: (record["test_elbo"], -record["epoch"]))["epoch"] if finite else None


def stopped_early(history: Sequence[dict], patience: int | None) -> bool:
    """Whether early stopping with ``patience`` ends a run with this history: its last ``patience`` epochs brought no
    evaluation ELBO above the best before them.

    Usage::

        stopped_early(history, patience=5)
    """
    best = best_epoch(history)
    return patience is not None and best is not None and history[-1]["epoch"] - best >= patience


def progress(total: int, description: str, show: bool):
    """A tqdm progress bar that is silent unless ``show`` (the CLI shows bars only on a terminal).

    Usage::

        with progress(100, "epoch 1/10", show=sys.stderr.isatty()) as bar:
            bar.update()
    """
    from tqdm import tqdm

    return tqdm(total=total, desc=description, leave=False, disable=not show)
