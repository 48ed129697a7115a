"""Smoke test of examples/custom_model.py: a user-written model trains end to end, in a fresh interpreter."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _elbo_rows(stdout: str) -> list[tuple[int, float, float]]:
    """The ``(iteration, mean, standard error)`` rows of the held-out ELBO table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["iteration"])
    rows = []
    for line in lines[start + 1 :]:
        match = re.fullmatch(r"\s*(\d+)\s+(\S+) ± (\S+)", line)
        if match is None:
            break
        rows.append((int(match[1]), float(match[2]), float(match[3])))
    return rows


@pytest.mark.slow
def test_custom_model_example_learns_and_prints_its_results() -> None:
    iterations = 3
    cmd = [sys.executable, "examples/custom_model.py", "--steps", "150", "--iterations", str(iterations)]
    cmd += ["--train-size", "500", "--test-size", "200", "--hidden", "32", "--log-every", "50"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr

    # The guide sorted the sites by itself.
    assert "local latents z (" in result.stdout and "scale (" in result.stdout
    assert "global latents mu" in result.stdout

    rows = _elbo_rows(result.stdout)
    assert [t for t, _, _ in rows] == list(range(iterations + 1))
    assert all(math.isfinite(mean) and math.isfinite(se) and se >= 0 for _, mean, se in rows)
    assert rows[-1][1] > rows[0][1], "refinement should improve on q's starting point"

    mu = re.search(r"Global latent 'mu': posterior median (\S+), true value (\S+)", result.stdout)
    assert mu is not None and math.isfinite(float(mu[1])) and float(mu[2]) == -1.2
    correlation = re.search(r"^  correlation: (\S+)$", result.stdout, flags=re.MULTILINE)
    assert correlation is not None and math.isfinite(float(correlation[1]))
