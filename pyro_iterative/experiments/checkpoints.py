"""Atomic files and the one checkpoint schema of a training run, :class:`TrainingCheckpoint`.

Files are written to a temporary file beside the target and renamed over it, so a crash mid-write
leaves the previous file intact. A :class:`TrainingCheckpoint` is what either training loop
(:func:`pyro_iterative.experiments.engine.train`, or Lightning through
:mod:`pyro_iterative.experiments.lightning`) saves after every epoch; it records which loop wrote it, and
:meth:`TrainingCheckpoint.load` refuses, with a message naming the file and the way out, a checkpoint that is
truncated, corrupt, from an earlier version of the package, from another configuration or from the other
loop, leaving the file as it was. When to save and what to resume is the training loops' business.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_SCHEMA",
    "CheckpointError",
    "ENGINES",
    "TrainingCheckpoint",
    "get_rng_state",
    "set_rng_state",
    "write_json",
]

#: Version of the checkpoint layout; files without it (written before the schema existed) are refused.
CHECKPOINT_SCHEMA = 1

#: The training loops that write checkpoints, and how a user resumes each.
ENGINES: dict[str, str] = {
    "svi": "the single-process loop (pyro-iterative train without --strategy, --devices, --accelerator or "
    "--num-nodes)",
    "lightning": "PyTorch Lightning (pyro-iterative train with --strategy, --devices, --accelerator or --num-nodes)",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, or written for another configuration or training loop."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by writers that were killed mid-write
            stale.unlink(missing_ok=True)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically.

    Usage::

        write_json(run_dir / "metrics.json", metrics)
    """
    _atomic_write(Path(path), lambda stream: stream.write((json.dumps(data, indent=2) + "\n").encode()))


@dataclass
class TrainingCheckpoint:
    """Everything a training run saves after an epoch, by either training loop.

    On disk it is a dict (``torch.save``) with these fields and ``schema``; ``torch.load(path)["epoch"]`` reads it
    without this class.

    Usage::

        TrainingCheckpoint(config={"method": "iterative"}, engine="svi", epoch=3, model=model.state_dict(),
                           guide=guide.state_dict(), optim=svi.optim.get_state(), history=history,
                           seconds=12.5).save("runs/a/iterative/checkpoint.pt")
        state = TrainingCheckpoint.load("runs/a/iterative/checkpoint.pt", config={"method": "iterative"},
                                        engine="svi")
        model.load_state_dict(state.model)

    :ivar config: the run settings it belongs to; resuming with other settings is refused.
    :ivar engine: the loop that wrote it, a key of :data:`ENGINES`; the other loop refuses it (their optimizer
        states differ: a Pyro optimizer's, a torch optimizer's).
    :ivar epoch: epochs completed.
    :ivar model: the model's ``state_dict``.
    :ivar guide: the guide's ``state_dict``.
    :ivar optim: the optimizer's state.
    :ivar history: one record per epoch (see :class:`pyro_iterative.experiments.engine.EpochRecord`).
    :ivar seconds: training seconds so far.
    :ivar nonfinite_gradients: the guide's count of contained non-finite inner gradients so far.
    :ivar rng: the random generators' state (single-process loop: an exact resume).
    :ivar world_size: processes that trained it (Lightning).
    """

    config: dict[str, Any]
    engine: str
    epoch: int
    model: dict[str, Any]
    guide: dict[str, Any]
    optim: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    nonfinite_gradients: int = 0
    rng: dict[str, Any] | None = None
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"Unknown training loop '{self.engine}'; choose one of {sorted(ENGINES)}.")

    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint to ``path`` atomically (a temporary file, then a rename)."""
        state = {"schema": CHECKPOINT_SCHEMA, **{f.name: getattr(self, f.name) for f in fields(self)}}
        _atomic_write(Path(path), lambda stream: torch.save(state, stream))

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, config: dict[str, Any] | None = None, engine: str | None = None
    ) -> "TrainingCheckpoint":
        """Read a checkpoint, checking that it belongs to ``config`` and was written by the loop ``engine``.

        :raises FileNotFoundError: if there is no file.
        :raises CheckpointError: if the file is truncated or corrupt, predates the schema, or its configuration or
            training loop differs (what differs is named, with the way out). The file is not modified.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No checkpoint at {path}; train first (or drop --resume).")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # a truncated zip, a pickle error, garbage bytes...
            raise CheckpointError(
                f"The checkpoint {path} is unreadable ({type(error).__name__}: {error}); it may be truncated or "
                "corrupt. It was left as it is: delete it to start again, or point --out elsewhere."
            ) from error
        if not isinstance(state, dict) or "config" not in state:
            raise CheckpointError(
                f"{path} is not a pyro-iterative checkpoint (no 'config' entry); it was left as it is."
            )
        if state.get("schema") != CHECKPOINT_SCHEMA:
            raise CheckpointError(
                f"{path} was written by another version of pyro-iterative (checkpoint schema {state.get('schema')}, "
                f"this version reads {CHECKPOINT_SCHEMA}) and cannot be resumed; it was left as it is. Delete it to "
                "train afresh, or train in another --out directory."
            )
        if config is not None:
            saved = state["config"]
            differing = sorted(k for k in set(config) | set(saved) if config.get(k) != saved.get(k))
            if differing:
                details = ", ".join(f"{k}: {saved.get(k)!r} in the file, {config.get(k)!r} now" for k in differing)
                raise CheckpointError(
                    f"The checkpoint {path} was written for another configuration ({details}). Resume with the same "
                    "settings, or start a new run in another --out directory."
                )
        if engine is not None and state["engine"] != engine:
            raise CheckpointError(
                f"The checkpoint {path} was written by {ENGINES[state['engine']]}; resume it the same way, or start "
                f"the run with {ENGINES[engine]} in another --out directory."
            )
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


def get_rng_state() -> dict[str, Any]:
    """The state of every random-number generator a run draws from (Python, NumPy, torch).

    Usage::

        state = get_rng_state()
        torch.randn(3)
        set_rng_state(state)   # the next draws repeat
    """
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state from :func:`get_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
