"""Atomic checkpoint and JSON files, and the random-number state that makes resumed runs identical.

Files are written to a temporary file beside the target and renamed over it, so a crash mid-write
leaves the previous file intact. Loading refuses, with a message naming the file, a checkpoint that
is truncated, corrupt or from another configuration, and leaves the file as it was. What goes into
a checkpoint is decided by :mod:`pyro_iterative.training`.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
    "write_json",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, or written for another configuration."""


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


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` to ``path`` atomically (temporary file, then rename).

    Usage::

        save_checkpoint(run_dir / "checkpoint.pt", {"config": config, "epoch": 3, ...})
    """
    _atomic_write(Path(path), lambda stream: torch.save(state, stream))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically.

    Usage::

        write_json(run_dir / "metrics.json", metrics)
    """
    _atomic_write(Path(path), lambda stream: stream.write((json.dumps(data, indent=2) + "\n").encode()))


def load_checkpoint(path: str | os.PathLike, *, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, checking it belongs to ``config``.

    Usage::

        state = load_checkpoint(run_dir / "checkpoint.pt", config=config)

    :raises FileNotFoundError: if there is no file.
    :raises CheckpointError: if the file is truncated or corrupt, or its ``config`` differs from ``config``
        (the keys that differ are named). The file is not modified.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}; train first (or drop --resume).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated zip, a pickle error, garbage bytes...
        raise CheckpointError(
            f"The checkpoint {path} is unreadable ({type(error).__name__}: {error}); it may be truncated or corrupt. "
            "It was left as it is: delete it to start again, or point --out elsewhere."
        ) from error
    if not isinstance(state, dict) or "config" not in state:
        raise CheckpointError(f"{path} is not a pyro-iterative checkpoint (no 'config' entry); it was left as it is.")
    if config is not None:
        saved = state["config"]
        differing = sorted(k for k in set(config) | set(saved) if config.get(k) != saved.get(k))
        if differing:
            details = ", ".join(f"{k}: {saved.get(k)!r} in the file, {config.get(k)!r} now" for k in differing)
            raise CheckpointError(
                f"The checkpoint {path} was written for another configuration ({details}). Resume with the same "
                "settings, or start a new run in another --out directory."
            )
    return state


def get_rng_state() -> dict[str, Any]:
    """The state of every random-number generator a run draws from (Python, NumPy, torch)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state from :func:`get_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
