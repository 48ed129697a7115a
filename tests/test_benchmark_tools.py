"""The measuring tools of benchmarks/: they import, and the memory counter sees a known allocation exactly."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def benchmarks():
    sys.path.insert(0, str(BENCHMARKS))
    yield {name: importlib.import_module(name) for name in
           ("_common", "overhead", "memory", "inference_efficiency", "scaling", "inference_cost", "run_all")}
    sys.path.remove(str(BENCHMARKS))


def test_memory_counter_sees_a_known_peak(benchmarks):
    memory = benchmarks["memory"]

    def step():
        a = torch.empty(1_000_000)  # 4 MB, freed before the next one is made
        del a
        b = torch.empty(250_000)  # 1 MB
        c = torch.empty(250_000)  # 1 MB
        return b, c

    assert memory.step_peak_bytes(step, "cpu") == 4_000_000


def test_scaling_arithmetic_counts_weights(benchmarks):
    scaling, overhead = benchmarks["scaling"], benchmarks["overhead"]
    model, guide, _, _, _ = overhead.build(dict(overhead.CONFIGS["small"]), 0)
    decoder = 2 * 32 + 32 * 10
    update = sum(p.numel() for n, p in guide.update_nets.named_parameters() if n.endswith("weight"))
    assert scaling.arithmetic(model, guide, K=5, batch=3) == 3 * (5 * (2 * decoder + 3 * update) + 3 * decoder)


def test_steps_to_reach_finds_the_first_step(benchmarks):
    steps_to_reach = benchmarks["inference_efficiency"].steps_to_reach
    trajectory = torch.tensor([[-10.0, -12.0], [-9.0, -8.0], [-7.0, -9.0], [-6.0, -5.0]])
    assert steps_to_reach(trajectory, -8.5) == 1
    assert steps_to_reach(trajectory, -5.5) == 3
    assert steps_to_reach(trajectory, 0.0) is None
