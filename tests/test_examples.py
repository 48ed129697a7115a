"""Smoke tests of the example scripts: each runs end to end, with tiny settings, in a fresh interpreter."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _parse_table(stdout: str) -> tuple[list[str], list[list[float]]]:
    """The column headers and the numeric rows (iteration, then mean and s.e. per run) of the ELBO table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["iteration"])
    headers = lines[start].split()[1:]
    rows = []
    for line in lines[start + 1 :]:
        tokens = line.split()
        if not tokens or not tokens[0].isdigit():
            break
        rows.append([float(token) for token in tokens if token != "±"])
    return headers, rows


def test_vae_mnist_runs_and_prints_a_finite_elbo_table() -> None:
    iterations = 2
    cmd = [sys.executable, "examples/vae_mnist.py", "--epochs", "1", "--steps-per-epoch", "3", "--train-size", "200"]
    cmd += ["--test-size", "50", "--latent-dim", "4", "--hidden", "32", "--iterations", str(iterations), "--quiet"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr

    headers, rows = _parse_table(result.stdout)
    assert headers == [f"K={iterations}", f"K={2 * iterations}"]
    assert [int(row[0]) for row in rows] == list(range(2 * iterations + 1))
    # Rows 0..K: mean and s.e. for both runs; rows K+1..2K: the longer test-time run only.
    assert [len(row) for row in rows] == [5] * (iterations + 1) + [3] * iterations
    assert all(math.isfinite(value) for row in rows for value in row[1:])
    assert all(se >= 0 for row in rows for se in row[2::2])
    # an antithetic pair of particles per iteration (the guide's default): two passes each, forward and backward; past
    # the K trained iterations each check adds 2 * 32 forward passes
    forward, backward = 2 * iterations, 2 * iterations
    longer = f"{2 * forward + 64 * iterations} / {2 * backward}"
    assert f"decoder passes per datapoint (forward / backward): {forward} / {backward}, {longer}" in result.stdout
    assert f"ELBO gain from {iterations} to {2 * iterations} iterations:" in result.stdout
    assert "inference seconds per datapoint" in result.stdout


def test_sequence_model_runs_and_prints_the_elbo_per_step_per_iteration() -> None:
    cmd = [sys.executable, "examples/sequence_model.py", "--steps", "3", "--iterations", "2", "--hidden", "16"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("iteration  iterative  encoder")
    rows = [line.split() for line in lines[start + 1:]]
    assert [int(row[0]) for row in rows] == [0, 1, 2]
    assert all(math.isfinite(float(value)) and float(value) < 0 for row in rows for value in row[1:])
    assert len(rows[0]) == 3 and len(rows[1]) == 2  # the encoder has one row: its one-shot q
