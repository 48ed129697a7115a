"""Data-parallel training with PyTorch Lightning: one model and guide on several processes, GPUs or machines.

This module follows Pyro's own Lightning example (``examples/svi_lightning.py``): the loss is the
``ELBOModule`` of ``Trace_ELBO()(model, guide)``, a plain torch module whose parameters are the model's and the
guide's; a torch optimizer updates them; the minibatch is chosen outside the model and handed to its data plate as
``subsample=`` indices; and Pyro's ``module_local_params`` setting is on, so that every parameter lives in its
module and none in Pyro's global parameter store (under DDP the parameters the forward pass uses must be the ones
DDP wraps). Lightning then does the rest: it starts the processes, wraps the module in
:class:`~torch.nn.parallel.DistributedDataParallel` and averages gradients across processes.

- :class:`ELBOLightningModule` wraps any model with any guide of this package (or any Pyro guide). Each process
  draws its own shard of the data set's indices (:class:`ShardSampler`, a seeded ``DistributedSampler``), and the
  model scales its log-likelihood by ``N / shard`` through the plate, so that DDP's average of the per-process
  gradients is exactly the gradient of one process on the union of the shards. What an epoch is (data draws,
  batching, the loss check, the record and its log line) is the engine's
  :class:`~pyro_iterative.experiments.engine.EpochPlan`, shared with the single-process loop.
- :class:`RankZeroCheckpoint` writes a :class:`~pyro_iterative.experiments.checkpoints.TrainingCheckpoint` after
  every epoch from global rank 0 only, atomically; ``pyro-iterative evaluate`` reads it like any other.
- :func:`train_lightning` is the engine's :func:`~pyro_iterative.experiments.engine.train` run by a Lightning
  ``Trainer``; :func:`train_method` is what ``pyro-iterative train --strategy ddp`` calls.

Why the guides' inner gradients are safe under DDP: the iterative and semi-amortized guides call
``torch.autograd.grad(elbo, lambda)`` inside their forward pass. ``torch.autograd.grad`` with explicit inputs runs
only the part of the graph that leads to ``lambda`` and accumulates nothing into any parameter's ``.grad``, so the
gradient-accumulation hooks through which DDP's reducer learns that a parameter's gradient is ready never fire
there; they fire once per parameter in the outer ``backward()`` of the loss, which is what DDP averages.
``tests/experiments/test_lightning.py`` checks this: two gloo processes end with identical parameters, equal to one
process run on the same global batches.

Lightning is an optional dependency: ``pip install "pyro-iterative[distributed]"``. Importing ``pyro_iterative``
does not import this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.nn import PyroModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .checkpoints import TrainingCheckpoint
from .config import RunConfig
from .engine import EpochPlan, EpochRecord, TestELBO, nonfinite_count, setup_guide
from .registry import METHODS, MODELS, build_model_and_guide

#: how to get the optional dependency, in every error about it
INSTALL_HINT = 'PyTorch Lightning is not installed; install it with: pip install "pyro-iterative[distributed]"'

try:
    import lightning.pytorch as pl
except ImportError as _error:  # the message names the fix
    raise ImportError(f"pyro_iterative.experiments.lightning needs lightning>=2.1. {INSTALL_HINT}") from _error

__all__ = [
    "ELBOLightningModule",
    "INSTALL_HINT",
    "RankZeroCheckpoint",
    "ShardSampler",
    "module_local_params",
    "train_lightning",
    "train_method",
]

@contextlib.contextmanager
def module_local_params() -> Iterator[None]:
    """Turn on Pyro's ``module_local_params`` setting inside the block and restore the previous value after it.

    Pyro fixes a :class:`~pyro.nn.PyroModule`'s parameter mode when the module is *constructed*: build the model and
    guide inside this block (a PyroModule built with the setting off fails under it with ``AttributeError:
    '_Context' object has no attribute 'param_state'``). :class:`ELBOLightningModule` checks this.

    Usage::

        with module_local_params():
            model = VAE(data_dim=784, latent_dim=64)
            guide = IterativeGuide(model, num_iterations=5)
    """
    with pyro.settings.context(module_local_params=True):
        yield


def _built_with_local_params(module: torch.nn.Module) -> bool:
    return all(
        hasattr(sub._pyro_context, "param_state") for sub in module.modules() if isinstance(sub, PyroModule)
    )


def _mixed_seed(*parts: int) -> int:
    """A 63-bit seed from integers (a different stream for each combination, the same on every machine)."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _Indices(Dataset):
    """The data set of datapoint indices ``0 .. size - 1``: the data stay in the module, the loader moves indices."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


class ShardSampler(DistributedSampler):
    """A seeded ``DistributedSampler`` over datapoint indices whose epoch counts on from a resumed run's.

    Every process shuffles the same permutation (seeded with ``seed`` and the epoch) and takes every
    ``num_replicas``-th index from position ``rank``, after dropping the tail so that all shards are the same size:
    the shards of one epoch are disjoint and cover ``num_replicas * (N // num_replicas)`` datapoints. Lightning calls
    ``set_epoch(e)`` with the epoch of the current ``fit``; ``epoch_offset`` (the epochs a resumed run already did)
    is added, so that a resumed run draws the same shards as an uninterrupted one.

    Usage::

        sampler = ShardSampler(1000, num_replicas=2, rank=0, seed=0)
        sampler.set_epoch(3)
        shard = list(sampler)          # 500 indices, disjoint from rank 1's
    """

    def __init__(self, size: int, *, num_replicas: int, rank: int, seed: int = 0, epoch_offset: int = 0) -> None:
        super().__init__(_Indices(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.epoch_offset = epoch_offset
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(self.epoch_offset + epoch)


class ELBOLightningModule(pl.LightningModule):
    """A LightningModule that trains a Pyro model and guide on the ELBO, data-parallel under DDP.

    The loss is Pyro's ``ELBOModule`` (``loss(model, guide)``, by default ``Trace_ELBO()(model, guide)``), called as
    ``model(data, subsample=indices)``: the model's data plate receives the minibatch, which every guide of this
    package reads from the plate. The data set stays in the module (each process holds all of it); the data loader
    yields index batches from :class:`ShardSampler`, so each process gets a different shard. With ``batch_size`` the
    *global* minibatch, each of the ``W`` processes takes ``batch_size // W`` datapoints, and DDP's average of their
    gradients equals the gradient of one process on the union (the plate scales log-likelihoods by ``N / shard``).

    The module runs its steps with Pyro's ``module_local_params`` on (see :func:`module_local_params`); build the model
    and guide with it on. The guide's parameters are created here
    (:func:`~pyro_iterative.experiments.engine.setup_guide`) if they do not exist yet, before the optimizer is built:
    build model and guide with the same seed on every process (DDP also broadcasts rank 0's initial parameters).

    An epoch is the engine's :class:`~pyro_iterative.experiments.engine.EpochPlan` (``plan``), as in the
    single-process loop. At each epoch start the module reseeds torch's generator from ``(seed, epoch, rank)`` (so a
    resumed run draws the same latent noise as an uninterrupted one, and processes draw different noise) and draws
    the epoch's data (``binarize_mode``: ``"dynamic"``, a fresh Bernoulli draw seeded by ``(seed, epoch)``, the same
    on every process; ``"static"``, one fixed draw; ``"none"``, the values as they are). It logs ``train_loss``, the
    loss per datapoint, with ``sync_dist=True``; :meth:`end_epoch` appends one record per epoch to ``history``.

    Usage::

        with module_local_params():
            model = VAE(data_dim=784, latent_dim=64)
            guide = IterativeGuide(model, num_iterations=5)
            module = ELBOLightningModule(model, guide, x_train, batch_size=64, lr=1e-3)
        trainer = lightning.pytorch.Trainer(max_epochs=10, strategy="ddp", devices=2, accelerator="cpu",
                                            use_distributed_sampler=False)
        with module_local_params():
            trainer.fit(module)

    :param model: a Pyro model called as ``model(data, subsample=indices)`` with its datapoints in a ``pyro.plate``.
    :param guide: a guide for it (any guide of this package, or an autoguide).
    :param data: the training set, datapoints on dim 0 (kept on CPU here, moved to the process's device at fit).
    :param batch_size: the global minibatch, split evenly across processes.
    :param lr: learning rate of the default optimizer, ``torch.optim.Adam``.
    :param loss: an ELBO whose call ``loss(model, guide)`` gives an ``ELBOModule`` (default ``Trace_ELBO()``).
    :param optimizer: ``optimizer(parameters)`` returning a torch optimizer (default Adam with ``lr``).
    :param binarize_mode: one of :data:`~pyro_iterative.data.binarization.BINARIZE_MODES`.
    :param seed: seeds the shards, the binarization and the per-epoch noise.
    :param evaluate: optional ``evaluate()`` returning the test ELBO's mean and standard error; called on global
        rank 0 after every epoch (with Pyro's ``module_local_params`` on), its values go into the history.
    :param epochs: the run's total epochs; when given, a resumed module trains only the epochs left.
    :param resume_state: a checkpoint of this module (see :meth:`checkpoint`) to continue from; only global rank
        0's copy is used (it is broadcast to the other processes when the fit starts).
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        data: torch.Tensor,
        *,
        batch_size: int = 64,
        lr: float = 1e-3,
        loss: Any | None = None,
        optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
        binarize_mode: str = "none",
        seed: int = 0,
        evaluate: Callable[[], tuple[float, float]] | None = None,
        epochs: int | None = None,
        resume_state: TrainingCheckpoint | None = None,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}.")
        for name, module in (("model", model), ("guide", guide)):
            if isinstance(module, torch.nn.Module) and not _built_with_local_params(module):
                raise ValueError(
                    f"The {name} was built with Pyro's module_local_params off, but ELBOLightningModule trains with it "
                    "on (every parameter in its module, none in Pyro's global store), and Pyro fixes the mode when a "
                    "PyroModule is constructed. Build the model and guide inside "
                    "`with pyro_iterative.experiments.lightning.module_local_params():`."
                )
        # data: a plain attribute, not a buffer, so DDP does not broadcast it at every step
        self.plan = EpochPlan(data.detach() if isinstance(data, torch.Tensor) else data, epochs=epochs,
                              batch_size=batch_size, binarize_mode=binarize_mode, seed=seed, evaluate=evaluate)
        self.data = self.plan.data
        self.lr = float(lr)
        self._make_optimizer = optimizer
        with module_local_params():
            setup_guide(guide, data, min(batch_size, len(data)))  # the guide's parameters exist before the optimizer
            self.elbo = (loss if loss is not None else Trace_ELBO())(model, guide)
        self.history: list[dict] = []  # one EpochRecord.as_dict() per epoch
        self.seconds = 0.0
        self.epoch_offset = 0
        self.nonfinite_gradients = 0  # summed over processes, at the end of each epoch
        self._nonfinite_before = 0
        self._resume_state = resume_state
        self._optim_state: dict | None = None
        self._device_data: torch.Tensor | None = None
        self._epoch_data: torch.Tensor | None = None
        self._epoch_losses: list[torch.Tensor] = []  # each step's loss per datapoint, averaged over processes
        self._epoch_start = 0.0

    # ------------------------------------------------------------------ what is trained

    @property
    def model(self) -> Callable:
        """The Pyro model (the ``ELBOModule``'s)."""
        return self.elbo.model

    @property
    def guide(self) -> Callable:
        """The guide (the ``ELBOModule``'s)."""
        return self.elbo.guide

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """The loss (negative ELBO, scaled to the whole data set as usual in Pyro) of the datapoints ``indices``."""
        data = self._epoch_data if self._epoch_data is not None else self.data.to(self.device)
        with module_local_params():
            return self.elbo(data, subsample=indices)

    # ------------------------------------------------------------------ Lightning hooks

    def _world(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def setup(self, stage: str) -> None:
        """Share rank 0's resume state with every process and load it (the process group exists here)."""
        if self._trainer is None or self._resume_state is None and self.trainer.world_size == 1:
            return
        state = self.trainer.strategy.broadcast(self._resume_state if self.trainer.is_global_zero else None, src=0)
        self._resume_state = None
        if state is None:
            return
        self.model.load_state_dict(state.model)
        self.guide.load_state_dict(state.guide)
        self._optim_state = state.optim
        self.history = list(state.history)
        self.seconds = float(state.seconds)
        self.epoch_offset = int(state.epoch)
        self._nonfinite_before = int(state.nonfinite_gradients)
        if self.plan.epochs is not None:
            self.trainer.fit_loop.max_epochs = max(0, self.plan.epochs - self.epoch_offset)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with ``lr`` over the ``ELBOModule``'s parameters (or the ``optimizer`` given), resumed if asked."""
        params = self.elbo.parameters()
        optimizer = self._make_optimizer(params) if self._make_optimizer else torch.optim.Adam(params, lr=self.lr)
        if self._optim_state is not None:
            optimizer.load_state_dict(self._optim_state)
            self._optim_state = None
        return optimizer

    def train_dataloader(self) -> DataLoader:
        """Batches of datapoint indices from this process's shard (``batch_size // world_size`` per batch)."""
        world, rank = self._world()
        sampler = ShardSampler(len(self.data), num_replicas=world, rank=rank, seed=self.plan.seed,
                               epoch_offset=self.epoch_offset)
        per_process = self.plan.batch_per_process(world, len(sampler))
        # Its own generator: a loader draws a seed for its workers each time it is iterated, which would otherwise
        # come from torch's global generator (the latent noise) at a point that differs in the first epoch of a fit.
        generator = torch.Generator().manual_seed(_mixed_seed(self.plan.seed, rank))
        return DataLoader(_Indices(len(self.data)), batch_size=per_process, sampler=sampler, drop_last=True,
                          generator=generator)

    def on_fit_start(self) -> None:
        self._device_data = self.plan.fixed_data().to(self.device)  # a static draw is made on the CPU, as in train()

    def on_train_epoch_start(self) -> None:
        epoch = self.epoch_offset + self.current_epoch + 1
        torch.manual_seed(_mixed_seed(self.plan.seed, epoch, self.global_rank))
        fixed = self._device_data if self._device_data is not None else self.data.to(self.device)
        generator = torch.Generator(device=fixed.device).manual_seed(_mixed_seed(self.plan.seed, epoch))
        self._epoch_data = self.plan.epoch_data(fixed, generator)
        self._epoch_losses = []
        self._epoch_start = time.perf_counter()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """The loss of this process's index batch; its value per datapoint is logged with ``sync_dist=True``."""
        loss = self(batch)
        per_datapoint = loss.detach() / len(self.data)
        overall = self.trainer.strategy.reduce(per_datapoint.clone(), reduce_op="mean")  # the same on every process
        self.plan.check_loss(float(overall), self.epoch_offset + self.current_epoch + 1, batch_idx + 1)
        self._epoch_losses.append(overall)
        self.log("train_loss", per_datapoint, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=len(batch))
        return loss

    def on_train_epoch_end(self) -> None:
        self.end_epoch()

    # ------------------------------------------------------------------ epochs and checkpoints

    def end_epoch(self) -> EpochRecord:
        """Close the epoch (on every process; called once per epoch, again returns the same record).

        Sums the guides' non-finite gradient counts over processes; on rank 0, the plan's
        :meth:`~pyro_iterative.experiments.engine.EpochPlan.record` averages the epoch's losses (already averaged
        over processes) and evaluates; the record is broadcast from rank 0 and appended to ``history``, as
        :func:`~pyro_iterative.experiments.engine.train` does.
        """
        epoch = self.epoch_offset + self.current_epoch + 1
        if self.history and self.history[-1]["epoch"] == epoch:
            return EpochRecord(**self.history[-1])
        strategy = self.trainer.strategy
        seconds = self.seconds + time.perf_counter() - self._epoch_start
        local_faults = torch.tensor(float(nonfinite_count(self.guide)), device=self.device)
        faults = self._nonfinite_before + int(strategy.reduce(local_faults, reduce_op="sum"))
        record = None
        if self.trainer.is_global_zero:
            with module_local_params():
                record = self.plan.record(epoch, seconds, [float(loss) for loss in self._epoch_losses])
        record = strategy.broadcast(record, src=0)
        self.seconds = record.seconds
        self.nonfinite_gradients = faults
        self.history.append(record.as_dict())
        return record

    def checkpoint(self, config: dict | None = None) -> TrainingCheckpoint:
        """What :class:`RankZeroCheckpoint` saves: a :class:`~pyro_iterative.experiments.checkpoints.TrainingCheckpoint`
        of the Lightning loop (the torch optimizer's state, the number of processes), parameters on the CPU."""

        def on_cpu(state: dict) -> dict:  # tensors to the CPU; a module's extra state (not a tensor) as it is
            return {key: value.detach().cpu() if torch.is_tensor(value) else value for key, value in state.items()}

        return TrainingCheckpoint(
            config=dict(config or {}), engine="lightning", epoch=self.history[-1]["epoch"] if self.history else 0,
            model=on_cpu(self.model.state_dict()), guide=on_cpu(self.guide.state_dict()),
            optim=self.trainer.optimizers[0].state_dict(), history=list(self.history), seconds=self.seconds,
            nonfinite_gradients=self.nonfinite_gradients, world_size=self.trainer.world_size,
        )


class RankZeroCheckpoint(pl.Callback):
    """After every epoch, global rank 0 writes the module's checkpoint atomically; the other processes write nothing.

    The file is written by :meth:`~pyro_iterative.experiments.checkpoints.TrainingCheckpoint.save` (a temporary
    file, then a rename), so a crash never leaves a torn checkpoint; all processes wait for the write before the
    next epoch.

    Usage::

        trainer = Trainer(..., callbacks=[RankZeroCheckpoint("runs/a/iterative/checkpoint.pt", config)])

    :param path: the checkpoint file.
    :param config: stored in the checkpoint; resuming refuses a checkpoint of another configuration.
    :param log: called on rank 0 with one line per epoch (``None``: silent).
    """

    def __init__(self, path: str | Path, config: dict | None = None, log: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.config = dict(config or {})
        self.report = log

    def on_train_epoch_end(self, trainer: pl.Trainer, module: ELBOLightningModule) -> None:
        record = module.end_epoch()  # collective: every process takes part
        if trainer.is_global_zero:
            if self.report is not None:
                self.report(record.line(module.plan.epochs, module.nonfinite_gradients))
            module.checkpoint(self.config).save(self.path)
        trainer.strategy.barrier("pyro_iterative_checkpoint")


@contextlib.contextmanager
def _quiet_lightning(quiet: bool) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        # Index batches are cheap to make in the main process: loader workers would not help.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # Lightning's own use of a torch pytree API that newer torch deprecates; nothing a user can act on.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        if quiet:
            for logger in loggers:
                logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def train_lightning(
    model: torch.nn.Module,
    guide: torch.nn.Module,
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
    strategy: Any = "auto",
    devices: int = 1,
    accelerator: str = "cpu",
    num_nodes: int = 1,
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
    loss: Any | None = None,
    callbacks: Sequence[pl.Callback] = (),
    trainer_options: dict[str, Any] | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train ``model`` and ``guide`` for ``epochs`` epochs with a Lightning ``Trainer``; return the per-epoch history.

    The counterpart of :func:`pyro_iterative.experiments.engine.train` on
    ``strategy``/``devices``/``accelerator``/``num_nodes`` (Lightning's own options; ``strategy="ddp"`` starts
    ``devices`` processes per machine by re-running the current command, so call it from a script guarded by
    ``if __name__ == "__main__":``). ``batch_size`` is the global
    minibatch; one epoch is ``N // batch_size`` steps, as in ``train``. The model and guide must have been built
    inside :func:`module_local_params`, with the same seed on every process; training runs with it on.

    Usage::

        with module_local_params():
            model = VAE(data_dim=784, latent_dim=64)
            guide = IterativeGuide(model, num_iterations=5)
        history = train_lightning(model, guide, x_train, epochs=10, strategy="ddp", devices=2,
                                  checkpoint="runs/a/iterative/checkpoint.pt", config={"method": "iterative"})

    :param checkpoint: where global rank 0 saves after every epoch (atomically); ``None`` saves nothing.
    :param config: stored in the checkpoint; resuming refuses a checkpoint of another configuration.
    :param resume: continue from ``checkpoint`` if it exists. Restored: the model's and guide's parameters, the
        optimizer's state, the epoch count, the history, the training seconds and the non-finite gradient count; the
        shards, binarizations and latent noise of later epochs are seeded by epoch, so the run continues as an
        uninterrupted one would. Global rank 0 reads the file and sends it to the other processes.
    :param evaluate: called on global rank 0 after every epoch; returns the test ELBO's mean and standard error.
    :param optimizer: ``optimizer(parameters)`` giving a torch optimizer (default ``torch.optim.Adam(lr=lr)``).
    :param loss: the ELBO (default ``Trace_ELBO()``).
    :param callbacks: more Lightning callbacks.
    :param trainer_options: more ``Trainer`` arguments (e.g. ``limit_train_batches``).
    :return: the history, the same on every process: one ``{"epoch", "seconds", "train_loss", "test_elbo",
        "test_elbo_se"}`` per epoch, the loss in nats per datapoint.
    :raises TrainingError: if a loss is not finite (on every process at once; the last good checkpoint is kept).
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}.")
    for name, value in (("devices", devices), ("num_nodes", num_nodes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    resume_state = None
    if resume and checkpoint is not None and Path(checkpoint).exists():
        resume_state = TrainingCheckpoint.load(checkpoint, config=config, engine="lightning")
    module = ELBOLightningModule(
        model, guide, x_train, batch_size=batch_size, lr=lr, loss=loss, optimizer=optimizer,
        binarize_mode=binarize_mode, seed=seed, evaluate=evaluate, epochs=epochs, resume_state=resume_state,
    )
    if resume_state is not None and not quiet:
        log(f"resumed from {checkpoint} after epoch {resume_state.epoch}")
    every = [*callbacks]
    if checkpoint is not None:
        every.append(RankZeroCheckpoint(checkpoint, config, log=None if quiet else log))
    options = dict(
        max_epochs=epochs, strategy=strategy, devices=devices, accelerator=accelerator, num_nodes=num_nodes,
        logger=False, enable_checkpointing=False, enable_model_summary=False, use_distributed_sampler=False,
        enable_progress_bar=not quiet and sys.stderr.isatty(), num_sanity_val_steps=0, callbacks=every,
    )
    options.update(trainer_options or {})
    distributed = torch.distributed.is_available()
    owned_group = distributed and not torch.distributed.is_initialized()
    with _quiet_lightning(quiet):
        trainer = pl.Trainer(**options)
        try:
            with module_local_params():
                trainer.fit(module)
        finally:
            # Lightning leaves the process group it created open; close it so the processes shut down in order.
            if owned_group and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
    return module.history


def train_method(
    config: RunConfig,
    method: str,
    x_train: torch.Tensor,
    x_eval: torch.Tensor,
    run_dir: str | Path,
    *,
    strategy: str = "ddp",
    devices: int = 1,
    accelerator: str = "cpu",
    num_nodes: int = 1,
    resume: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[torch.nn.Module, torch.nn.Module, list[dict]]:
    """Train one method of a :class:`~pyro_iterative.experiments.config.RunConfig` with Lightning;
    ``pyro-iterative train --strategy`` calls this. Returns ``(model, guide, history)``.

    Model and guide are built by :func:`~pyro_iterative.experiments.registry.build_model_and_guide`, as in
    :func:`pyro_iterative.experiments.comparison.train_method` (same seed, same matched sizes), inside
    :func:`module_local_params`, on the CPU (Lightning moves them to each process's device). Global rank 0 writes
    ``run_dir/<method>/checkpoint.pt`` after every epoch, in the format ``pyro-iterative evaluate`` reads.

    Usage::

        model, guide, history = train_method(RunConfig(methods=("iterative",)), "iterative", x_train, x_eval,
                                             Path("runs/a"), strategy="ddp", devices=2, accelerator="cpu")
    """
    spec = METHODS[method]
    x_train, x_eval = x_train.cpu(), x_eval.cpu()
    with pyro.get_param_store().scope(), module_local_params():
        model, guide = build_model_and_guide(config, method, x_train)
        evaluator = spec.test_time(model, guide, config)
    if not quiet:
        log(f"== {spec.label(config)} (Lightning: strategy={strategy}, {devices} device(s) x {num_nodes} node(s), "
            f"accelerator={accelerator})")
    with pyro.get_param_store().scope():
        history = train_lightning(
            model, guide, x_train, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
            binarize_mode=config.binarize, seed=config.seed,
            evaluate=TestELBO(evaluator, model, x_eval, config.seed),
            checkpoint=Path(run_dir) / method / "checkpoint.pt", config=config.training_key(method), resume=resume,
            strategy=strategy, devices=devices, accelerator=accelerator, num_nodes=num_nodes,
            loss=MODELS[config.model].loss(), quiet=quiet, log=log,
        )
    return model, guide, history

