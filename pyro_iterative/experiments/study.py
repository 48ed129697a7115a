"""The tuning study behind ``pyro-iterative compare --study``: equal tuning budgets, validation selection, early
stopping, one measurement on the test set.

:data:`STUDY_GRID` declares, once, the configurations every method is tuned over (the same number for each: the
learning rate crossed with the method's own knob); :data:`STUDY_REFERENCES` the rows trained once at another method's
selected configuration (variational EM with many more steps: what unlimited inference compute buys).
:func:`study_config` is the preset. :func:`run_study` trains every configuration on the training digits less a
seeded, stratified validation split, each with early stopping on its validation ELBO (its best epoch kept), selects
each method's configuration by best validation ELBO, and only then measures the selected ones on the test set. Every
training checkpoints after each epoch and every measurement is saved as soon as it is done, so a study killed at any
moment resumes where it was (``--resume``); disjoint ``--methods`` may run in separate processes on one directory.

Layout of a study directory: ``study.json`` (its settings), ``grid/<method>/<configuration>/`` (a run directory per
configuration, as :func:`~pyro_iterative.experiments.comparison.train_method` writes it), ``measured/<method>.json``
(its test measurement), then ``metrics.json``, figures and ``report.md``. How a single comparison is trained and
measured lives in :mod:`pyro_iterative.experiments.comparison`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoints import TrainingCheckpoint, write_json
from .comparison import (
    draw_report,
    load_trained,
    machine,
    measure_method,
    reconstructed_datapoints,
    train_method,
    versions,
)
from .config import RunConfig, RunDirError, open_run_dir, run_dir_config, settings_differing
from .datasets import evaluation_data, validation_data
from .engine import best_epoch, progress, stopped_early
from .figures import figure_data
from .registry import METHODS

__all__ = [
    "STUDY_GRID",
    "STUDY_PRESET",
    "STUDY_REFERENCES",
    "StudyCell",
    "grid_cells",
    "run_study",
    "selected_cells",
    "study_config",
]

#: Every method's tuning grid: the shared axes crossed with the method's own knob. Each method gets the same number
#: of configurations (checked at import). Values are :class:`~pyro_iterative.experiments.config.RunConfig` fields.
STUDY_GRID: dict[str, dict[str, tuple[Any, ...]]] = {
    "standard": {"lr": (1e-3, 3e-3), "depth": (2, 3)},
    "iterative": {"lr": (1e-3, 3e-3), "highway": (False, True)},
    "encoder_iterative": {"lr": (1e-3, 3e-3), "highway": (False, True)},
    "semi_amortized": {"lr": (1e-3, 3e-3), "inner_lr": (0.1, 1.0)},
    "variational_em": {"lr": (1e-3, 3e-3), "inner_lr": (0.005, 0.05)},
}

#: Rows trained once, untuned, at the configuration selected for another method: ``{row: tuned method}``.
STUDY_REFERENCES: dict[str, str] = {"variational_em_reference": "variational_em"}

#: What ``--study`` changes in the run settings (options given on the command line still win).
STUDY_PRESET: dict[str, Any] = {
    "validation": 500, "patience": 5, "epochs": 100, "eval_datapoints": 1000, "ll_datapoints": 500,
    "gap_datapoints": 200, "is_samples": 5000,
}


def _grid_sizes() -> None:
    sizes = {method: _size(axes) for method, axes in STUDY_GRID.items()}
    if len(set(sizes.values())) != 1:
        raise AssertionError(f"every method must get the same tuning budget; the grid gives {sizes}")


def _size(axes: dict[str, tuple]) -> int:
    size = 1
    for values in axes.values():
        size *= len(values)
    return size


_grid_sizes()


def study_config(**settings: Any) -> RunConfig:
    """The study's shared settings: :data:`STUDY_PRESET` with ``settings`` over it (``methods`` defaults to every
    method of :data:`STUDY_GRID` and :data:`STUDY_REFERENCES`).

    Usage::

        base = study_config(train_size=1000)   # a smaller study
    """
    settings = {**STUDY_PRESET, **{k: v for k, v in settings.items() if v is not None}}
    settings.setdefault("methods", (*STUDY_GRID, *STUDY_REFERENCES))
    for method in settings["methods"]:
        if method not in STUDY_GRID and method not in STUDY_REFERENCES:
            raise ValueError(f"The study tunes {', '.join(STUDY_GRID)} and adds {', '.join(STUDY_REFERENCES)}; "
                             f"'{method}' is not one of them.")
        if STUDY_REFERENCES.get(method, method) not in settings["methods"]:
            raise ValueError(f"{method} is trained at the configuration selected for {STUDY_REFERENCES[method]}: "
                             f"add {STUDY_REFERENCES[method]} to --methods.")
    return RunConfig(**settings)


@dataclass(frozen=True)
class StudyCell:
    """One configuration of one method in a study.

    :ivar method: the method's name.
    :ivar name: the configuration's directory name, e.g. ``"lr=0.001,highway=True"``.
    :ivar settings: what it sets over the study's shared settings.
    :ivar config: the whole run configuration.
    """

    method: str
    name: str
    settings: dict[str, Any]
    config: RunConfig

    def run_dir(self, out_dir: Path) -> Path:
        """Its run directory inside the study directory ``out_dir``."""
        return Path(out_dir) / "grid" / self.method / self.name

    def history(self, out_dir: Path) -> list[dict]:
        """Its training history so far (empty before its first epoch)."""
        path = self.run_dir(out_dir) / self.method / "checkpoint.pt"
        return TrainingCheckpoint.load(path).history if path.exists() else []

    def done(self, out_dir: Path) -> bool:
        """Whether its training has ended: stopped early, or run for the most epochs."""
        history = self.history(out_dir)
        return bool(history) and (stopped_early(history, self.config.patience)
                                  or history[-1]["epoch"] >= self.config.epochs)


def _cell(base: RunConfig, method: str, settings: dict[str, Any]) -> StudyCell:
    name = ",".join(f"{key}={value}" for key, value in settings.items())
    config = dataclasses.replace(base, methods=(method,), **settings)
    return StudyCell(method, name, dict(settings), config)


def grid_cells(base: RunConfig, method: str) -> list[StudyCell]:
    """Every configuration of ``method`` in :data:`STUDY_GRID`, over the shared settings ``base``.

    Usage::

        [cell.name for cell in grid_cells(study_config(), "iterative")]   # ["lr=0.001,highway=False", ...]
    """
    combos: list[dict[str, Any]] = [{}]
    for key, values in STUDY_GRID[method].items():
        combos = [{**combo, key: value} for combo in combos for value in values]
    return [_cell(base, method, combo) for combo in combos]


def _best_validation(history: list[dict]) -> float:
    epoch = best_epoch(history)
    return history[epoch - 1]["test_elbo"] if epoch is not None else float("-inf")


def selected_cells(base: RunConfig, out_dir: Path) -> dict[str, StudyCell]:
    """Each method's selected configuration: the highest best-epoch validation ELBO of its finished grid (no test
    datapoint is read); a reference row's cell is its tuned method's selection with the row's method. Methods whose
    grid has not finished are left out.

    Usage::

        selected_cells(study_config(), Path("runs/study"))["iterative"].name
    """
    chosen: dict[str, StudyCell] = {}
    for method in (m for m in base.methods if m in STUDY_GRID):
        cells = grid_cells(base, method)
        if all(cell.done(out_dir) for cell in cells):
            chosen[method] = max(cells, key=lambda cell: _best_validation(cell.history(out_dir)))
    for row, tuned in STUDY_REFERENCES.items():
        if row in base.methods and tuned in chosen:
            chosen[row] = _cell(base, row, chosen[tuned].settings)
    return chosen


def _open_study(out_dir: Path, base: RunConfig, resume: bool) -> None:
    settings = {**base.to_dict(), "grid": {m: {k: list(v) for k, v in STUDY_GRID[m].items()} for m in STUDY_GRID},
                "references": STUDY_REFERENCES}
    path = out_dir / "study.json"
    if path.exists():
        if not resume:
            raise RunDirError(f"{out_dir} already holds a study; add --resume to continue it, or another --out")
        differing = settings_differing(json.loads(path.read_text()), settings)
        if differing:
            raise RunDirError(f"{out_dir} holds a study of other settings ({', '.join(differing)}); resume with the "
                              "same options, or choose another --out")
    elif resume:
        raise RunDirError(f"--resume given, but {out_dir} holds no study (no study.json)")
    write_json(path, settings)


class _Progress:
    """The study's progress bar (tqdm, on a terminal) and, for logs, the same count with an estimate of the time left
    at this call's pace."""

    def __init__(self, total: int, show: bool) -> None:
        self.bar = progress(total, "study", show)
        self.total, self.done, self.counted, self.start = total, 0, 0, time.perf_counter()

    def update(self, units: int = 1, counted: bool = True) -> None:
        self.bar.update(units)
        self.done += units
        self.counted += units if counted else 0

    def line(self) -> str:
        text = f"study: {self.done}/{self.total} epoch budget done"
        if self.counted:
            left = (self.total - self.done) * (time.perf_counter() - self.start) / self.counted
            text += f", at most about {left / 60:.0f} min left at this pace (early stopping ends most runs sooner)"
        return text


def _train_cell(cell: StudyCell, out_dir: Path, data: tuple[torch.Tensor, torch.Tensor], bar: _Progress,
                quiet: bool, log: Callable[[str], None]) -> None:
    run_dir = cell.run_dir(out_dir)
    open_run_dir(run_dir, cell.config, resume=run_dir_config(run_dir).exists())
    if not quiet:
        log(f"== {cell.method} [{cell.name}]  ({bar.line()})")
    _, _, history = train_method(cell.config, cell.method, *data, run_dir, resume=True, quiet=quiet, log=log,
                                 on_epoch=lambda record: bar.update())
    bar.update(cell.config.epochs - len(history), counted=False)  # the epochs early stopping saved
    if not quiet:
        best = best_epoch(history)
        log(f"   {len(history)} epochs, best validation ELBO {_best_validation(history):.3f} at epoch {best}")


def _measure_cell(cell: StudyCell, out_dir: Path, x_train: torch.Tensor, x_test: torch.Tensor,
                  with_figures: bool, log: Callable[[str], None]) -> None:
    path = out_dir / "measured" / f"{cell.method}.json"
    if path.exists():
        return
    log(f"measuring {cell.method} [{cell.name}] on the test set")
    model, guide, history, _ = load_trained(cell.config, cell.method, x_train, cell.run_dir(out_dir))
    entry = measure_method(cell.config, cell.method, model, guide, history, x_test)
    entry.update(selected=cell.name, best_epoch=best_epoch(history), epochs_trained=len(history))
    figures = figure_data(cell.config, model, guide, x_train, x_test, log) if with_figures else None
    write_json(path, {"entry": entry, "figures": figures})


def _grid_summary(base: RunConfig, out_dir: Path, chosen: dict[str, StudyCell]) -> dict:
    summary = {}
    for method in (m for m in base.methods if m in STUDY_GRID):
        rows = []
        for cell in grid_cells(base, method):
            history = cell.history(out_dir)
            rows.append({"configuration": cell.name, "settings": cell.settings, "epochs": len(history),
                         "best_epoch": best_epoch(history), "best_validation_elbo": _best_validation(history),
                         "seconds": history[-1]["seconds"] if history else 0.0,
                         "validation_elbo": [record["test_elbo"] for record in history],
                         "epoch_seconds": [record["seconds"] for record in history],
                         "selected": chosen[method].name == cell.name})
        summary[method] = rows
    return summary


def run_study(
    out_dir: str | Path,
    base: RunConfig,
    *,
    share: tuple[str, ...] | None = None,
    resume: bool = False,
    command: str = "pyro-iterative compare --study",
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> dict | None:
    """Run (or continue) the study of ``base.methods`` in ``out_dir``; write and return its metrics once every method
    is measured, else return ``None``.

    ``share`` restricts this call to some of the methods (default: all): processes with disjoint shares can work on
    one study directory at once; the one that measures the last method writes the report. A reference row is trained
    once its tuned method's grid is done (by whichever share holds the row). A progress bar runs over every
    configuration's most epochs (those that early stopping saves count as done when it stops) and the measurements,
    with tqdm's estimate of the time left.

    Usage::

        metrics = run_study("runs/study", study_config())
        metrics = run_study("runs/study", study_config(), resume=True)   # after a kill

    :raises RunDirError: when ``out_dir`` holds a study of other settings, or ``resume`` finds none.
    """
    out_dir = Path(out_dir)
    share = tuple(base.methods) if share is None else tuple(share)
    if set(share) - set(base.methods):
        raise ValueError(f"--share {','.join(share)} names methods outside the study ({', '.join(base.methods)}).")
    _open_study(out_dir, base, resume)
    x_train, x_test = evaluation_data(base)
    x_valid = validation_data(base)
    cells = [cell for method in share if method in STUDY_GRID for cell in grid_cells(base, method)]
    references = [m for m in share if m in STUDY_REFERENCES]
    total = (len(cells) + len(references)) * base.epochs + len(share)
    bar = _Progress(total, not quiet and sys.stderr.isatty())
    with bar.bar:
        bar.update(sum(base.epochs if cell.done(out_dir) else len(cell.history(out_dir)) for cell in cells),
                   counted=False)  # done before this call
        for cell in cells:
            if not cell.done(out_dir):
                _train_cell(cell, out_dir, (x_train, x_valid), bar, quiet, log)
        chosen = selected_cells(base, out_dir)  # validation ELBOs only: the test set is read after this line
        for row in references:
            if row not in chosen:
                log(f"{row} waits for the grid of {STUDY_REFERENCES[row]} (another share): run again once it is done")
            elif chosen[row].done(out_dir):
                bar.update(base.epochs, counted=False)
            else:
                _train_cell(chosen[row], out_dir, (x_train, x_valid), bar, quiet, log)
        figures_method = next((spec.name for spec in METHODS if spec.figures and spec.name in chosen), None)
        for method in share:
            if method in chosen:
                _measure_cell(chosen[method], out_dir, x_train, x_test, method == figures_method, log)
            bar.update()
    waiting = [m for m in base.methods if not (out_dir / "measured" / f"{m}.json").exists()]
    if waiting:
        log(f"not measured yet: {', '.join(waiting)}; run the study again (--resume) once their grids are trained")
        return None
    return _study_metrics(out_dir, base, command)


def _study_metrics(out_dir: Path, base: RunConfig, command: str) -> dict:
    chosen = selected_cells(base, out_dir)
    loaded = {m: json.loads((out_dir / "measured" / f"{m}.json").read_text()) for m in base.methods}
    metrics = {"config": {**base.to_dict(), "command": command, "versions": versions(), "machine": machine()},
               "methods": {m: loaded[m]["entry"] for m in base.methods}}
    shown = reconstructed_datapoints(metrics["methods"], evaluation_data(base)[1])
    if shown is not None:
        metrics["reconstructed_datapoints"] = shown
    figures = next((item["figures"] for item in loaded.values() if item["figures"] is not None), None)
    if figures is not None:
        metrics["figures"] = figures
    metrics["study"] = {"grid": _grid_summary(base, out_dir, chosen), "references": dict(STUDY_REFERENCES),
                        "selected": {m: cell.name for m, cell in chosen.items()}}
    write_json(out_dir / "metrics.json", metrics)
    draw_report(metrics, out_dir)
    return metrics
