"""The measuring tools of benchmarks/: they import, and the memory counter sees known allocations exactly."""

import importlib
import sys
from pathlib import Path

import pytest
import torch
from pyro.infer import Trace_ELBO

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def benchmarks():
    sys.path.insert(0, str(BENCHMARKS))
    yield {name: importlib.import_module(name) for name in
           ("_common", "overhead", "memory", "inference_efficiency", "scaling", "inference_cost", "run_all")}
    sys.path.remove(str(BENCHMARKS))


def test_memory_counter_sees_known_peaks(benchmarks):
    memory = benchmarks["memory"]
    before = [torch.empty(2_000_000)]  # 8 MB allocated before the session and freed inside it: not counted

    def build():
        before.clear()
        held = torch.empty(500_000)  # 2 MB held by the "model" through every step

        def step():
            a = torch.empty(1_000_000)  # 4 MB, freed before the next one is made
            del a
            b = torch.empty(250_000)  # 1 MB
            c = torch.empty(250_000)  # 1 MB
            return held, b, c

        return step

    peaks = memory.step_peaks_cpu(build, warmup=1, steps=2)
    assert peaks == [(6_000_000, 4_000_000)] * 2  # total: held + 4 MB; step-added: 4 MB


def test_scaling_arithmetic_counts_weights(benchmarks):
    scaling, overhead = benchmarks["scaling"], benchmarks["overhead"]
    model, guide, _, _, _ = overhead.build(dict(overhead.CONFIGS["small"]), 0)
    decoder = 2 * 32 + 32 * 10
    data = 10 * 32  # the data's share of the first layer: used once per step
    update = (4 + 8) * 32 + 32 * 32 + 2 * 32 * 4  # lambda (4), its encoded gradient (8) -> 32 -> 32 -> gate, delta
    step = 5 * (2 * decoder + 3 * update) + 3 * decoder + 2 * data
    assert scaling.arithmetic(model, guide, K=5, batch=3) == 3 * step


def test_steps_to_reach_finds_the_first_step(benchmarks):
    steps_to_reach = benchmarks["inference_efficiency"].steps_to_reach
    trajectory = torch.tensor([[-10.0, -12.0], [-9.0, -8.0], [-7.0, -9.0], [-6.0, -5.0]])
    assert steps_to_reach(trajectory, -8.5) == 1
    assert steps_to_reach(trajectory, -5.5) == 3
    assert steps_to_reach(trajectory, 0.0) is None


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _gradients(modules):
    return [p.grad.clone() for module in modules for p in module.parameters()]


def test_plain_reference_is_the_guides_algorithm(benchmarks, float64):
    # The overhead benchmark's ratio means something only if B computes what A computes: same loss, same gradients.
    overhead = benchmarks["overhead"]
    model, guide, _, plain, x = overhead.build(dict(overhead.CONFIGS["small"]), 0)
    torch.manual_seed(3)
    Trace_ELBO().differentiable_loss(model, guide, x).backward()
    torch.manual_seed(3)
    lam, network_loss, _ = plain.refine(x)
    lam = lam.detach() + (lam - lam.detach()) / plain.K
    surrogate = network_loss / plain.K
    loss = -plain.elbo(lam, x).sum() + (surrogate - surrogate.detach()).sum()
    loss.backward()
    torch.manual_seed(3)
    assert Trace_ELBO().loss(model, guide, x) == pytest.approx(loss.item(), rel=1e-12)
    a, b = _gradients([guide.update_nets[0], model.decoder]), _gradients([plain.update, plain.decoder])
    assert len(a) == len(b) == 13  # 9 update-network (one on the data) and 4 decoder tensors
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-12)
    assert max(float(v.abs().max()) for v in b) > 1e-3  # the gradients compared are not all zero


def test_floor_one_shot_steps_compute_the_same_loss(benchmarks, float64):
    overhead = benchmarks["overhead"]
    floor = overhead.Floor(dict(overhead.CONFIGS["small"]), 0)
    torch.manual_seed(5)
    pyro_loss = Trace_ELBO().loss(floor.model, floor.encoder_guide, floor.x)
    torch.manual_seed(5)
    assert pyro_loss == pytest.approx(floor.plain_loss().item(), rel=1e-12)
    assert set(floor.calls()) == {"svi_one_shot", "plain_one_shot", "model_run", "plain_elbo"}


def test_zoo_variants_scale_only_the_guides_learning_rate_and_keep_their_own_files(tmp_path, monkeypatch):
    import pyro

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    zoo = importlib.import_module("zoo")
    entry = zoo.ZOO["small"]
    x, _ = entry.data()
    model = entry.build()
    guide = zoo.GUIDES["amortized"](model)
    optim = zoo.adam(1e-3, guide, 0.3)
    pyro.infer.SVI(model, guide, optim, Trace_ELBO()).step(x, subsample_size=20)
    guide_tensors = {id(p) for p in guide.parameters()}
    rates = {id(p): o.param_groups[0]["lr"] for p, o in optim.optim_objs.items()}
    assert [rates[i] for i in guide_tensors] == pytest.approx([3e-4] * len(guide_tensors))
    assert {rate for i, rate in rates.items() if i not in guide_tensors} == {1e-3}  # the model's
    assert len(rates) > len(guide_tensors) > 0
    # a results file refuses cells of other settings; the defaults' label refuses variants
    out = tmp_path / "variant.json"
    out.write_text('{"settings": {"seed": 0, "options": {}, "guide_lr_factor": 0.3}, "cells": {}}')
    other = tmp_path / "other.json"
    other.write_text('{"settings": {"seed": 1}, "cells": {}, "machine": "m", "steps": 1, "particles": 1}')
    for argv in (["--label", "v", "--out", str(out)], ["--options", 'iterative={"highway": true}'],
                 ["--render", str(out), str(other)]):
        monkeypatch.setattr(sys, "argv", ["zoo.py", "--quick", "--models", "small", "--guides", "amortized", *argv])
        with pytest.raises(SystemExit):
            zoo.main()


def test_the_horizon_check_benchmark_compares_runs_that_share_their_first_k_iterations(tmp_path, monkeypatch):
    import json

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    horizon = importlib.import_module("horizon_check")
    cell = horizon.run_cell("small", 3e-3, steps=20, particles=4, seed=0)  # asserts the shared first K iterations
    assert cell["k"] == 5
    for variant, check, _, _ in horizon.VARIANTS:
        run = cell[variant]
        assert len(run["per_iteration"]) == 2 * cell["k"] + 1
        if not check:  # without the check every datapoint still moves at 2K (its update is never sent back)
            assert run["moving"] == 1.0 and run["vs_none"] == [0.0, 0.0]
    out = tmp_path / "h.json"
    monkeypatch.setattr(sys, "argv", ["horizon_check.py", "--quick", "--models", "small", "--out", str(out)])
    horizon.main()
    saved = json.loads(out.read_text())
    assert set(saved["cells"]) == {"small/0.001", "small/0.003"} and out.with_suffix(".md").exists()
    monkeypatch.setattr(sys, "argv", ["horizon_check.py", "--quick", "--models", "small", "--out", str(out),
                                      "--seed", "1"])
    with pytest.raises(SystemExit):  # a results file refuses cells of another seed
        horizon.main()
