"""Training one guide and model: the SVI loop by epochs, with evaluation, checkpoints and exact resume.

:func:`train` runs ``Trace_ELBO`` SVI over a data set held as one tensor (the model's plate draws each
minibatch), evaluates the test ELBO after every epoch, and checkpoints atomically after every epoch,
saving the random-number state too, so that ``resume=True`` finishes with the same numbers as an
uninterrupted run. Which methods and models exist, and what is measured at the end, lives in
:mod:`pyro_iterative.methods` and :mod:`pyro_iterative.cli`.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from .checkpoints import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .data import binarize, static_binarize

__all__ = [
    "BINARIZE_MODES",
    "TrainingError",
    "progress",
    "setup_guide",
    "train",
]

BINARIZE_MODES = ("dynamic", "static", "none")


class TrainingError(RuntimeError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


def setup_guide(guide, x: torch.Tensor, batch_size: int):
    """Build a guide's parameters for the model called as ``model(x, subsample_size=batch_size)``.

    Usage::

        setup_guide(guide, x_train, 64).load_state_dict(state["guide"])
    """
    if hasattr(guide, "setup"):
        return guide.setup(x, subsample_size=batch_size)
    guide._setup_prototype(x, subsample_size=batch_size)
    return guide


def _training_data(x: torch.Tensor, mode: str, seed: int) -> Callable[[], torch.Tensor]:
    if mode == "dynamic":
        return lambda: binarize(x)  # the global torch generator: its state is checkpointed
    if mode == "static":
        fixed = static_binarize(x, seed=seed)
        return lambda: fixed
    if mode == "none":
        return lambda: x
    raise ValueError(f"Unknown binarization '{mode}'; choose one of {BINARIZE_MODES}.")


def train(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    x_train: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    binarize_mode: str = "dynamic",
    evaluate: Callable[[], tuple[float, float]] | None = None,
    checkpoint: str | Path | None = None,
    config: dict | None = None,
    resume: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train ``model`` and ``guide`` with SVI for ``epochs`` epochs; return the per-epoch history.

    Each epoch draws the training data (``binarize_mode``: a fresh Bernoulli draw per epoch, one fixed
    draw, or the grey levels), takes ``len(x_train) // batch_size`` SVI steps with Adam, calls
    ``evaluate()`` (returning test ELBO mean and standard error), logs one line and checkpoints.

    Usage::

        history = train(model, guide, x_train, epochs=10, evaluate=lambda: (-100.0, 1.0),
                        checkpoint="runs/a/iterative/checkpoint.pt", config={"method": "iterative"})

    :param checkpoint: where to save after every epoch (atomically); ``None`` saves nothing.
    :param config: stored in the checkpoint; resuming refuses a checkpoint of another configuration.
    :param resume: continue from ``checkpoint`` if it exists (a finished run is returned as it is).
    :raises TrainingError: if a loss is not finite (the last good checkpoint is kept).
    """
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}.")
    if len(x_train) == 0:
        raise ValueError("The training set is empty.")
    config = dict(config or {})
    draw = _training_data(x_train, binarize_mode, config.get("seed", 0))
    setup_guide(guide, x_train, min(batch_size, len(x_train)))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    history, seconds, first_epoch = [], 0.0, 1
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, config=config)
        if state.get("engine") is not None:
            raise ValueError(
                f"{checkpoint} was written by the {state['engine']} training loop (pyro_iterative.lightning); resume "
                "it with that loop (pyro-iterative train with the same --strategy/--devices options), or start afresh."
            )
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
        pyro.clear_param_store()  # the next call registers the loaded tensors
        svi.optim.set_state(state["optim"])
        set_rng_state(state["rng"])
        history, seconds, first_epoch = state["history"], state["seconds"], state["epoch"] + 1
        if hasattr(guide, "nonfinite_gradients"):
            guide.nonfinite_gradients = state.get("nonfinite_gradients", 0)
        log(f"resumed from {checkpoint} after epoch {state['epoch']}")
    steps = max(1, len(x_train) // batch_size)
    show = not quiet and sys.stderr.isatty()
    for epoch in range(first_epoch, epochs + 1):
        start = time.perf_counter()
        x, total = draw(), 0.0
        with progress(steps, f"epoch {epoch}/{epochs}", show) as bar:
            for step in range(steps):
                loss = svi.step(x, subsample_size=min(batch_size, len(x))) / len(x)
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"Non-finite loss ({loss}) at epoch {epoch}, step {step + 1}; the last good checkpoint "
                        f"({checkpoint or 'none'}) is kept. Lower the learning rate or check the data."
                    )
                total += loss
                bar.update()
        seconds += time.perf_counter() - start
        test_elbo, test_elbo_se = evaluate() if evaluate is not None else (float("nan"), float("nan"))
        record = {"epoch": epoch, "seconds": seconds, "train_loss": total / steps, "test_elbo": test_elbo,
                  "test_elbo_se": test_elbo_se}
        history.append(record)
        faults = getattr(guide, "nonfinite_gradients", 0)
        if not quiet:
            log(f"epoch {epoch:3d}/{epochs}  train loss {record['train_loss']:9.3f}  test ELBO {test_elbo:9.3f} "
                f"± {test_elbo_se:.3f}  ({seconds:6.1f} s)"
                + (f"  [{faults} non-finite ELBO gradients contained so far]" if faults else ""))
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {"config": config, "epoch": epoch, "model": model.state_dict(), "guide": guide.state_dict(),
                 "optim": svi.optim.get_state(), "rng": get_rng_state(), "history": history, "seconds": seconds,
                 "nonfinite_gradients": faults},
            )
    return history


def progress(total: int, description: str, show: bool):
    """A tqdm progress bar that is silent unless ``show`` (the CLI shows bars only on a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, leave=False, disable=not show)
