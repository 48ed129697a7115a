"""Data-parallel training with PyTorch Lightning (pyro_iterative.experiments.lightning): DDP, checkpoints, resume, CLI.

The central test launches two CPU processes (gloo backend) through Lightning's own DDP launcher, which re-runs a
script this file writes, and checks that DDP averaged exactly the gradients a single process computes on the
union of the two processes' minibatches, although the iterative guide takes ``torch.autograd.grad`` inside its
forward pass.
"""

import functools
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

pytest.importorskip("lightning")

from pyro_iterative import IterativeGuide  # noqa: E402
from pyro_iterative.experiments.checkpoints import CheckpointError, TrainingCheckpoint  # noqa: E402
from pyro_iterative.experiments.lightning import (  # noqa: E402
    ShardSampler,
    module_local_params,
    train_lightning,
)
from pyro_iterative.models import VAE, LinearGaussian  # noqa: E402

#: The DDP run: Lightning re-runs this file (with LOCAL_RANK=1) to start the second process.
DDP_SCRIPT = '''
import sys

import torch
import torch.distributions.normal

torch.set_num_threads(1)

import lightning.pytorch as pl

import pyro_iterative.experiments.lightning as pl_training
from pyro_iterative import IterativeGuide, SemiAmortizedGuide
from pyro_iterative.experiments.lightning import module_local_params, train_lightning
from pyro_iterative.experiments.registry import observe_rows
from pyro_iterative.models import VAE

LR = 2e-3
CALLS = [0]


def fixed_noise(shape, dtype=None, device=None):
    """The standard-normal draw of Normal.rsample, replaced by the same value for every datapoint and particle."""
    CALLS[0] += 1
    size = shape[-1] if len(shape) else 1
    pattern = torch.linspace(-0.8, 0.9, size, dtype=dtype, device=device)
    return pattern.expand(shape).clone() if len(shape) else pattern[0].clone()


def build(kind):
    """The model, guide and data, identically on every process (and in the single-process reference)."""
    torch.manual_seed(0)
    x = torch.rand(48, 20, dtype=torch.float64)
    with module_local_params():
        model = VAE(data_dim=20, latent_dim=2, hidden_sizes=(16,)).double()
        if kind == "iterative":
            guide = IterativeGuide(model, num_iterations=2, hidden_sizes=(16,))
        else:  # gradient steps trained through (create_graph=True inside the forward pass)
            guide = SemiAmortizedGuide(model, num_steps=2, lr=0.03, hidden_sizes=(16,), observe=observe_rows)
    return model, guide.setup(x, subsample_size=8), x


def state(module):
    return {key: value.detach().clone() for key, value in module.elbo.state_dict().items() if torch.is_tensor(value)}


class Recorder(pl.Callback):
    """Every process saves its initial and final parameters, the index batches it saw and its checkpoint writes."""

    def __init__(self, out, writes):
        self.out, self.writes, self.batches, self.initial = out, writes, [], None

    def on_train_start(self, trainer, module):
        self.initial = state(module)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append(batch.detach().cpu().clone())

    def on_train_end(self, trainer, module):
        torch.save({"rank": trainer.global_rank, "world_size": trainer.world_size, "initial": self.initial,
                    "final": state(module), "batches": self.batches, "history": module.history,
                    "writes": list(self.writes), "noise_calls": CALLS[0]}, f"{self.out}/rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out, kind = sys.argv[1], sys.argv[2]
    torch.distributions.normal._standard_normal = fixed_noise
    writes = []
    save = pl_training.TrainingCheckpoint.save

    def recording_save(checkpoint, path):
        writes.append(str(path))
        save(checkpoint, path)

    pl_training.TrainingCheckpoint.save = recording_save
    model, guide, x = build(kind)
    train_lightning(model, guide, x, epochs=2, batch_size=16, binarize_mode="none", seed=0,
                    optimizer=lambda params: torch.optim.SGD(params, lr=LR), strategy="ddp", devices=2,
                    accelerator="cpu", checkpoint=f"{out}/run/checkpoint.pt", config={"test": "ddp"},
                    callbacks=[Recorder(out, writes)], quiet=True)
'''


def _clean_env() -> dict:
    """The environment of a fresh launch: one thread per process, no inherited distributed settings."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK")
           and not key.startswith("PL_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CI="true")
    return env


def _run(command: list, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=_clean_env(), stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _reference(build, steps, lr, *, gradient_scale: float = 1.0):
    """One process, Pyro's ELBOModule and a torch SGD optimizer, on the given index batches."""
    model, guide, x = build()
    with module_local_params():
        elbo = Trace_ELBO()(model, guide)
        initial = {key: value.detach().clone() for key, value in elbo.state_dict().items() if torch.is_tensor(value)}
        optimizer = torch.optim.SGD(elbo.parameters(), lr=lr)
        for indices in steps:
            optimizer.zero_grad()
            (elbo(x, subsample=indices) * gradient_scale).backward()
            optimizer.step()
    return initial, {key: value.detach().clone() for key, value in elbo.state_dict().items() if torch.is_tensor(value)}


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


@pytest.mark.parametrize("kind", ["iterative", "semi_amortized"])
def test_ddp_on_two_processes_equals_one_process_on_the_global_batches(tmp_path, monkeypatch, kind):
    """Two gloo processes (Lightning's DDP, 2 epochs of 3 steps, global batch 16 = 2 shards of 8) end with identical
    parameters, equal to one process run on the union of their shards, step by step, for the iterative guide (K=2)
    and the semi-amortized one (2 gradient steps trained through).

    Randomness: the only random draws in training are the reparameterized Normal samples of the guide (its inner
    ELBO's and the final q's). Two processes draw noise for their own datapoints where one process draws it for all
    of them, so the runs could not coincide. The test therefore replaces the standard-normal draw inside
    ``Normal.rsample`` (in both runs) by a fixed vector that is the same for every datapoint and particle: the guide
    still samples z = loc + scale * eps through Pyro, with gradients through loc and scale, and still takes
    ``torch.autograd.grad`` of its inner ELBO inside the forward pass DDP wraps; only the noise is deterministic. The
    reference run is checked to be deterministic, and to have used the replaced draw.

    The optimizer is plain SGD, so that the check sees the scale of the gradient (Adam would not notice gradients
    summed instead of averaged): the test also shows that a reference with doubled gradients, or one that sees only
    rank 0's shard (no reduction), is far outside the tolerance.
    """
    script = tmp_path / "ddp_script.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    _run([sys.executable, str(script), str(out), kind], cwd=tmp_path)
    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["noise_calls"] > 0 for r in ranks)  # the fixed noise was really used by both processes

    # every process saw its own shard: 3 steps per epoch, disjoint batches of 8 that cover the 48 datapoints per epoch
    batches = [r["batches"] for r in ranks]
    assert [len(b) for b in batches] == [6, 6] and all(len(i) == 8 for b in batches for i in b)
    for step in range(6):
        assert not set(batches[0][step].tolist()) & set(batches[1][step].tolist())
    for epoch in range(2):
        seen = torch.cat([b[s] for b in batches for s in range(3 * epoch, 3 * epoch + 3)])
        assert sorted(seen.tolist()) == list(range(48))
    assert batches[0][0].tolist() != batches[0][3].tolist()  # a new shuffle in the second epoch

    # (a) identical parameters on both processes, before and after training
    assert _max_difference(ranks[0]["initial"], ranks[1]["initial"]) == 0.0
    assert _max_difference(ranks[0]["final"], ranks[1]["final"]) == 0.0
    losses = [[(r["epoch"], r["train_loss"]) for r in rank["history"]] for rank in ranks]
    assert losses[0] == losses[1] and len(losses[0]) == 2

    # (b) equal to one process on the same global batches (the union of the two shards at every step)
    namespace = runpy.run_path(str(script), run_name="reference")
    build = functools.partial(namespace["build"], kind)
    calls = [0]

    def counted_noise(*args, **kwargs):
        calls[0] += 1
        return namespace["fixed_noise"](*args, **kwargs)

    monkeypatch.setattr(torch.distributions.normal, "_standard_normal", counted_noise)
    steps = [torch.cat([batches[0][s], batches[1][s]]) for s in range(6)]
    lr = namespace["LR"]
    initial, single = _reference(build, steps, lr)
    assert calls[0] > 0
    assert _max_difference(initial, ranks[0]["initial"]) == 0.0
    moved = _max_difference(initial, single)
    assert moved > 1e-2  # training really changed the parameters
    difference = _max_difference(single, ranks[0]["final"])
    print(f"max |DDP - one process| = {difference:.3e}; parameters moved by up to {moved:.3e}")
    assert difference < 1e-10, f"DDP and one process differ by {difference:.3e} (parameters moved by {moved:.3e})"
    torch.manual_seed(123)  # deterministic: other seeds give the same run
    assert _max_difference(_reference(build, steps, lr)[1], single) == 0.0

    # the comparison can fail: summed instead of averaged gradients, or no reduction at all, are far off
    summed = _reference(build, steps, lr, gradient_scale=2.0)[1]
    assert _max_difference(summed, ranks[0]["final"]) > 1e-4
    unreduced = _reference(build, batches[0], lr)[1]
    assert _max_difference(unreduced, ranks[0]["final"]) > 1e-4

    # only rank 0 wrote checkpoints (one per epoch), atomically, and the last one holds the final parameters
    assert len(ranks[0]["writes"]) == 2 and ranks[1]["writes"] == []
    files = sorted(p.name for p in (out / "run").iterdir())
    assert files == ["checkpoint.pt"]  # no temporary files left behind
    saved = TrainingCheckpoint.load(out / "run" / "checkpoint.pt", config={"test": "ddp"}, engine="lightning")
    assert saved.epoch == 2 and saved.engine == "lightning" and saved.world_size == 2
    assert [(r["epoch"], r["train_loss"]) for r in saved.history] == losses[0]
    final = ranks[0]["final"]
    for part in ("model", "guide"):
        for key, value in getattr(saved, part).items():
            if not torch.is_tensor(value):  # a module's extra state (the encoder clip's recent medians)
                continue
            assert torch.equal(value, final[f"{part}.{key}"]), (part, key)


# ---------------------------------------------------------------------------------------------- one process


def _linear_gaussian(n: int = 256):
    with module_local_params():
        model = LinearGaussian.orthogonal(data_dim=6, latent_dim=2, noise_scale=0.5, seed=0)
        guide = IterativeGuide(model, num_iterations=2, hidden_sizes=(16,))
    x = model.sample(n, seed=1)
    return model, guide, x


def test_module_trains_a_guide_and_rank_zero_checkpoint_loads(tmp_path):
    """Single process: the loss falls, the checkpoint loads into a fresh model and guide, the setting is restored."""
    model, guide, x = _linear_gaussian()
    x_test = model.sample(200, seed=2)
    before = float(guide.setup(x[:4]).elbo_trajectory(x_test)[-1].mean())
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    history = train_lightning(model, guide, x, epochs=4, batch_size=32, lr=1e-2, binarize_mode="none",
                              evaluate=lambda: (float(guide.elbo_trajectory(x_test)[-1].mean()), 0.0),
                              checkpoint=checkpoint, config={"name": "lg"}, quiet=True)
    assert pyro.settings.get("module_local_params") is False  # restored after training
    assert [record["epoch"] for record in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.5
    after = float(guide.elbo_trajectory(x_test)[-1].mean())
    assert after > before + 1.0 and abs(history[-1]["test_elbo"] - after) < 0.5

    state = TrainingCheckpoint.load(checkpoint, config={"name": "lg"})
    assert state.epoch == 4 and state.history == history and state.world_size == 1
    fresh_model = LinearGaussian.orthogonal(data_dim=6, latent_dim=2, noise_scale=0.5, seed=5)
    fresh = IterativeGuide(fresh_model, num_iterations=2, hidden_sizes=(16,)).setup(x[:4])
    fresh_model.load_state_dict(state.model)
    fresh.load_state_dict(state.guide)
    for ours, theirs in zip(guide.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(ours, theirs)
    with pytest.raises(CheckpointError, match="another configuration"):
        TrainingCheckpoint.load(checkpoint, config={"name": "other"})


def test_a_model_with_an_enumerated_latent_trains_under_trace_enum_elbo():
    """The loss is any Pyro ELBO: TraceEnum_ELBO sums a mixture's cluster out, and the guide's loss falls."""
    from pyro.infer import TraceEnum_ELBO

    from pyro_iterative.models import MixturePriorVAE

    with module_local_params():
        model = MixturePriorVAE(data_dim=12, latent_dim=2, num_clusters=3, hidden_sizes=(16,))
        x, _ = model.sample(256)
        guide = IterativeGuide(model, num_iterations=2, hidden_sizes=(16,))
    history = train_lightning(model, guide, x, epochs=3, batch_size=64, lr=1e-2, binarize_mode="none",
                              loss=TraceEnum_ELBO(max_plate_nesting=1), quiet=True)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert torch.isfinite(guide.elbo_trajectory(x[:20])).all()


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """Stop after epoch 1 and resume: parameters, optimizer and history match a run of 3 epochs straight."""

    def run(epochs, checkpoint, resume=False, parts=None):
        pyro.set_rng_seed(0)
        model, guide, x = parts or _linear_gaussian(128)
        history = train_lightning(model, guide, x, epochs=epochs, batch_size=32, lr=1e-2, binarize_mode="none",
                                  checkpoint=checkpoint, config={"n": 1}, resume=resume, quiet=True)
        return guide, history

    whole_guide, whole = run(3, tmp_path / "whole.pt")
    run(1, tmp_path / "cut.pt")
    cut_guide, cut = run(3, tmp_path / "cut.pt", resume=True)
    assert [r["train_loss"] for r in cut] == [r["train_loss"] for r in whole]
    for ours, theirs in zip(whole_guide.state_dict().values(), cut_guide.state_dict().values()):
        assert torch.equal(ours, theirs)
    # a finished run is returned as it is
    _, again = run(3, tmp_path / "cut.pt", resume=True)
    assert [r["train_loss"] for r in again] == [r["train_loss"] for r in whole]


def test_shard_sampler_splits_each_epoch_into_disjoint_equal_shards():
    shards = [ShardSampler(11, num_replicas=3, rank=rank, seed=4) for rank in range(3)]
    for sampler in shards:
        sampler.set_epoch(2)
    drawn = [list(sampler) for sampler in shards]
    assert [len(d) for d in drawn] == [3, 3, 3]
    assert len(set(sum(drawn, []))) == 9 and set(sum(drawn, [])) <= set(range(11))
    resumed = ShardSampler(11, num_replicas=3, rank=1, seed=4, epoch_offset=2)
    resumed.set_epoch(0)  # the first epoch of a resumed fit is epoch 2 of the run
    assert list(resumed) == drawn[1]


def test_bad_settings_are_refused_with_a_message():
    model, guide, x = _linear_gaussian(10)
    with pytest.raises(ValueError, match="fewer than its batch"):
        train_lightning(model, guide, x, epochs=1, batch_size=16, binarize_mode="none", quiet=True)
    with pytest.raises(ValueError, match="Unknown binarization"):
        train_lightning(model, guide, x, epochs=1, binarize_mode="sometimes", quiet=True)
    with pytest.raises(ValueError, match="devices must be a positive integer"):
        train_lightning(model, guide, x, epochs=1, devices=0, quiet=True)
    built_outside = VAE(data_dim=6, latent_dim=2, hidden_sizes=(8,))
    with pytest.raises(ValueError, match="module_local_params"):
        train_lightning(built_outside, IterativeGuide(built_outside), x, epochs=1, quiet=True)


def test_importing_the_package_does_not_import_lightning():
    code = ("import sys, pyro_iterative, pyro_iterative.cli, pyro_iterative.experiments.comparison; "
            "print(sorted(m for m in sys.modules if m == 'lightning' or m.startswith('lightning.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_lightning_the_import_error_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "pyro_iterative.experiments.lightning")
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    with pytest.raises(ImportError, match=r'pip install "pyro-iterative\[distributed\]"'):
        import pyro_iterative.experiments.lightning  # noqa: F401


# ---------------------------------------------------------------------------------------------- the command line

TINY = ["--quick", "--epochs", "2", "--train-size", "128", "--eval-datapoints", "40", "--ll-datapoints", "4",
        "--gap-datapoints", "16", "--is-samples", "50", "--local-steps", "3", "--latent-dim", "4", "--hidden", "32",
        "--iterations", "2", "--quiet"]


@pytest.mark.slow
def test_cli_train_with_ddp_on_two_cpu_processes_then_evaluate(tmp_path):
    """`pyro-iterative train --strategy ddp --devices 2 --accelerator cpu`, then `evaluate` reads its checkpoint."""
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    from pyro_iterative.cli import main

    out = tmp_path / "run"
    command = [sys.executable, "-m", "pyro_iterative", "train", *TINY, "--method", "iterative", "--strategy", "ddp",
               "--devices", "2", "--accelerator", "cpu", "--out", str(out)]
    result = _run(command, cwd=tmp_path)
    assert f"checkpoint: {out / 'iterative' / 'checkpoint.pt'}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "iterative"]
    assert sorted(p.name for p in (out / "iterative").iterdir()) == ["checkpoint.pt"]
    state = torch.load(out / "iterative" / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 2 and state["world_size"] == 2 and len(state["history"]) == 2
    assert all(record["test_elbo"] < 0 for record in state["history"])
    assert main(["evaluate", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["methods"]["iterative"]["history"] == state["history"]
    assert len(metrics["methods"]["iterative"]["elbo_per_iteration"]) == 3


def test_cli_lightning_run_in_one_process_and_the_two_loops_do_not_mix(tmp_path):
    """`--devices 1` trains through Lightning in this process; resuming it without Lightning is refused, and back."""
    pytest.importorskip("mlxtend")
    from pyro_iterative.cli import main

    out = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "1", "--method", "standard", "--out", str(out)]
    assert main([*args, "--devices", "1", "--accelerator", "cpu"]) == 0
    state = torch.load(out / "standard" / "checkpoint.pt", weights_only=False)
    assert state["engine"] == "lightning" and state["epoch"] == 1
    with pytest.raises(SystemExit, match="written by PyTorch Lightning .*resume it the same way"):
        main([*args, "--resume"])
    plain = tmp_path / "plain"
    plain_args = ["train", *TINY, "--epochs", "1", "--method", "standard", "--out", str(plain)]
    assert main(plain_args) == 0
    with pytest.raises(SystemExit, match="written by the single-process loop .*resume it the same way"):
        main([*plain_args, "--resume", "--devices", "1", "--accelerator", "cpu"])
