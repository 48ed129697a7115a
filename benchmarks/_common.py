"""Shared helpers for the benchmarks: options, machine description, side-by-side timing, JSON output.

Nothing here is measured. Every benchmark times its contenders with :func:`alternate`: warm-up calls of each,
then timed repetitions in alternating order (A B, then B A, ...) so that drift in the machine (thermal, other
processes, allocator state) hits every contender alike; results are medians over the timed repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyro
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick``, ``--threads``, ``--seed``, ``--out``, ``--device``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a small budget (about 20 s) to check that it runs")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: one core per process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<name>.json)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default cpu)")
    return p


def check_device(device: str) -> None:
    """Refuse ``--device cuda`` on a machine without CUDA, with a message that says so."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this machine has no CUDA device (torch.cuda.is_available() is False).")


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a clock read after a call includes it."""
    if device == "cuda":
        torch.cuda.synchronize()


def setup(threads: int, seed: int) -> None:
    torch.set_num_threads(threads)
    seed_everything(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
    }


def machine_line(info: dict) -> str:
    return (
        f"machine: {info['platform']} ({info['processor']}), {info['cpu_count']} CPUs, "
        f"torch threads {info['torch_threads']}, python {info['python']}, torch {info['torch']}, pyro {info['pyro']}"
    )


def alternate(
    calls: dict[str, Callable[[], object]], warmup: int, reps: int, device: str = "cpu"
) -> dict[str, list[float]]:
    """Time every callable ``reps`` times, round-robin, after ``warmup`` untimed rounds.

    The order of the contenders is reversed on every other round (A B C, C B A, ...). On CUDA the device is
    synchronized before each clock read.
    :return: seconds per call, a list per name.
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            synchronize(device)
            start = time.perf_counter()
            calls[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def summary(seconds: list[float]) -> dict:
    """Median and spread (quartiles) of a list of timings, in seconds."""
    q = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
    return {"median_s": statistics.median(seconds), "q1_s": q[0], "q3_s": q[2], "n": len(seconds)}


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over repetitions of a[i] / b[i] (the two were timed next to each other)."""
    return statistics.median(x / y for x, y in zip(a, b))


def table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-style markdown table."""
    cells = [[str(c) for c in row] for row in [header] + rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_json(name: str, payload: dict, out: Path | None = None) -> Path:
    path = out if out is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
