"""The pyro-iterative command: a tiny end-to-end comparison, plot, evaluate, and its errors."""

import json
import subprocess
import sys

import pytest

from pyro_iterative.cli import main
from pyro_iterative.experiments.config import RunConfig

pytest.importorskip("mlxtend")
pytest.importorskip("matplotlib")

TINY = ["--quick", "--epochs", "1", "--train-size", "128", "--eval-datapoints", "40", "--ll-datapoints", "4",
        "--gap-datapoints", "16", "--is-samples", "50", "--local-steps", "3", "--latent-dim", "4", "--hidden", "32",
        "--iterations", "2", "--quiet"]


@pytest.mark.slow
def test_compare_quick_writes_metrics_figures_and_report(tmp_path):
    out = tmp_path / "run"
    assert main(["compare", *TINY, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"standard", "iterative", "semi_amortized", "variational_em"}
    for entry in metrics["methods"].values():
        for key in ("test_elbo", "elbo_per_iteration", "log_likelihood", "amortization_gap", "inference_params",
                    "decoder_passes_per_datapoint", "train_seconds", "infer_seconds_per_datapoint"):
            assert key in entry
        assert len(entry["history"]) == 1
    assert len(metrics["methods"]["iterative"]["elbo_per_iteration"]) == 3
    params = [metrics["methods"][m]["inference_params"] for m in ("standard", "iterative", "semi_amortized")]
    assert max(params) / min(params) < 1.05  # matched inference networks
    assert metrics["config"]["versions"]["pyro"]
    for name in ("optimizer_comparison", "reconstructions", "posterior_2d", "training_curves"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "Iterative (K=2)" in report and "pyro-iterative compare" in report

    # plot redraws from the metrics alone; evaluate re-measures from the checkpoints, with the same numbers
    (out / "report.md").unlink()
    assert main(["plot", str(out / "metrics.json")]) == 0
    assert (out / "report.md").exists()
    assert main(["evaluate", "--out", str(out), "--quiet"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    for name, entry in metrics["methods"].items():
        for key in ("test_elbo", "log_likelihood", "amortization_gap"):
            assert again["methods"][name][key] == entry[key], (name, key)


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_metrics(tmp_path):
    args = [*TINY, "--methods", "standard,iterative", "--epochs", "3"]
    main(["compare", *args, "--out", str(tmp_path / "whole")])
    command = [sys.executable, "-m", "pyro_iterative", "compare", *args, "--out", str(tmp_path / "cut")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "cut" / "iterative" / "checkpoint.pt"
    import time

    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert checkpoint.exists(), "the run never reached the iterative method's first checkpoint"
    assert not (tmp_path / "cut" / "metrics.json").exists()
    main(["compare", *args, "--out", str(tmp_path / "cut"), "--resume"])
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())["methods"]
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())["methods"]
    timings = {"train_seconds", "infer_seconds_per_datapoint", "history"}
    for name in whole:  # two runs with the same seed: identical apart from timings
        assert {k: v for k, v in cut[name].items() if k not in timings} == {
            k: v for k, v in whole[name].items() if k not in timings
        }
        strip = [{k: v for k, v in r.items() if k != "seconds"} for r in whole[name]["history"]]
        assert [{k: v for k, v in r.items() if k != "seconds"} for r in cut[name]["history"]] == strip


def test_bad_options_are_refused_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--methods", "standard,magic", "--out", str(tmp_path / "a")])
    assert "unknown method(s) ['magic']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "--epochs", "0"])
    assert "must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="holds no run"):
        main(["compare", *TINY, "--out", str(tmp_path / "b"), "--resume"])
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "missing.json")])
    assert "no metrics file" in capsys.readouterr().err


def test_help_explains_every_command(capsys):
    for command in ("compare", "train", "evaluate", "plot"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: pyro-iterative " + command in capsys.readouterr().out


@pytest.mark.slow
def test_training_killed_at_random_points_resumes_to_completion(tmp_path):
    """Kill `train` at seeded random moments (mid-step, mid-evaluation or mid-checkpoint-write), resume each time."""
    import random
    import time

    import torch

    epochs = 8
    args = [*TINY, "--method", "iterative", "--epochs", str(epochs), "--out", str(tmp_path / "run")]
    command = [sys.executable, "-m", "pyro_iterative", "train", *args]
    checkpoint = tmp_path / "run" / "iterative" / "checkpoint.pt"
    started = tmp_path / "run" / "config.json"

    def epoch_reached() -> int:
        try:
            return torch.load(checkpoint, weights_only=False)["epoch"] if checkpoint.exists() else 0
        except Exception:  # replaced while being read: ask again
            return -1

    chooser = random.Random(0)
    reached = []
    for target in sorted(chooser.sample(range(1, epochs - 2), 3)):
        process = subprocess.Popen(command + (["--resume"] if started.exists() else []),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while epoch_reached() < target and time.time() < deadline and process.poll() is None:
            time.sleep(0.02)
        time.sleep(chooser.uniform(0.0, 0.6))  # then somewhere inside the next epoch (or its checkpoint write)
        process.kill()
        process.wait()
        reached.append(epoch_reached())
    assert any(0 < epoch < epochs for epoch in reached), reached  # the kills really cut training short
    final = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    state = torch.load(checkpoint, weights_only=False)
    assert state["epoch"] == epochs and len(state["history"]) == epochs
    assert not list(checkpoint.parent.glob(".*.tmp"))  # files left by killed writes were cleaned up


@pytest.mark.slow
@pytest.mark.parametrize("model", [["hierarchical", "--encode", "gradient,errors"], ["gaussian"],
                                   ["bow", "--dataset", "corpus"], ["mixture"], ["m2"]])
def test_compare_runs_every_bundled_model(tmp_path, model):
    out = tmp_path / "run"
    args = ["compare", "--model", *model, *TINY, "--methods", "standard,iterative", "--latent-dim", "6", "--out"]
    assert main([*args, str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == model[0]
    for entry in metrics["methods"].values():
        assert entry["test_elbo"] < 0 and len(entry["history"]) == 1
        assert ("perplexity" in entry) == (model[0] == "bow")
        assert ("accuracy" in entry) == (model[0] == "m2")  # on mnist5k-labelled, m2's default data set
        assert 0 <= entry.get("accuracy", 0) <= 1
    assert ("Test accuracy" in (out / "report.md").read_text()) == (model[0] == "m2")


# ---------------------------------------------------------------------------------------------- Lightning options


@pytest.fixture
def lightning_present(monkeypatch):
    """Pretend the 'distributed' extra is installed, so that the option checks after that one can be tested."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: object() if name == "lightning" else find_spec(name, *args))


def test_lightning_options_without_lightning_name_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "lightning" else find_spec(name, *args))
    for option in (["--strategy", "ddp"], ["--devices", "2"], ["--num-nodes", "2"], ["--accelerator", "cpu"]):
        with pytest.raises(SystemExit):
            main(["train", *TINY, *option, "--out", str(tmp_path / "a")])
        assert 'pip install "pyro-iterative[distributed]"' in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # refused before anything was written


def test_lightning_options_are_checked_with_a_message(tmp_path, lightning_present, capsys):
    out = ["--out", str(tmp_path / "a")]
    with pytest.raises(SystemExit):
        main(["train", *TINY, "--batch-size", "63", "--devices", "2", *out])
    assert "must split evenly across the 2 processes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", *TINY, "--batch-size", "64", "--devices", "2", "--num-nodes", "3", *out])
    assert "choose a multiple of 6" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", *TINY, "--device", "cpu", "--accelerator", "gpu", *out])
    assert "disagree" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # main(argv) from Python: DDP would re-run the wrong command line
        main(["train", *TINY, "--strategy", "ddp", "--devices", "2", *out])
    assert "re-running this command line" in capsys.readouterr().err
    for bad in (["--devices", "0"], ["--strategy", "horovod"], ["--accelerator", "tpu"], ["--num-nodes", "-1"]):
        with pytest.raises(SystemExit):
            main(["train", *TINY, *bad, *out])
        assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the options belong to train only
        main(["compare", *TINY, "--devices", "2", *out])
    assert "unrecognized arguments: --devices 2" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_accelerator_gpu_without_a_gpu_is_refused(tmp_path, lightning_present, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit):
        main(["train", *TINY, "--accelerator", "gpu", "--out", str(tmp_path / "a")])
    assert "no CUDA GPU is visible" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_runs_the_dmm_on_a_users_sequences(tmp_path):
    import numpy as np

    from pyro_iterative.data import synthetic_sequences

    sequences, lengths = synthetic_sequences(40, max_length=7, data_dim=6, seed=0, min_length=2)
    np.savez(tmp_path / "songs.npz", sequences=sequences.numpy(), lengths=lengths.numpy())
    out = tmp_path / "run"
    args = ["compare", "--model", "dmm", "--dataset", str(tmp_path / "songs.npz"), *TINY, "--latent-dim", "3",
            "--hidden", "16", "--batch-size", "12", "--comparison-steps", "2", "--gap-steps", "20",
            "--methods", "standard,iterative,variational_em",
            "--out", str(out)]
    # the DMM's own methods by default: its inference network, the shared-network iterative guide, the network's
    # semi-amortized refinement (trained in tests/guides/test_sequential.py; left out here for time) and variational EM
    assert RunConfig(model="dmm").methods == ("standard", "iterative", "semi_amortized", "variational_em")
    assert (RunConfig(model="dmm").latent_dim, RunConfig(model="dmm").hidden) == (100, 200)
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["standard", "iterative", "variational_em"]
    params = [metrics["methods"][m]["inference_params"] for m in ("standard", "iterative")]
    assert max(params) / min(params) < 1.05 and metrics["methods"]["variational_em"]["inference_params"] == 0
    from pyro_iterative.experiments.datasets import train_test_split

    steps = int(train_test_split(lengths)[1].sum())  # the real steps of the seeded split's 8 test sequences
    for entry in metrics["methods"].values():
        assert entry["test_elbo"] < 0 and entry["steps"] == steps
        assert entry["elbo_per_step"] < 0 and entry["log_likelihood_per_step"] < 0
    assert (out / "piano_rolls.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Test ELBO / step" in (out / "report.md").read_text()


def test_a_run_directory_resumes_only_with_its_own_settings(tmp_path):
    from pyro_iterative.experiments.config import RunDirError, open_run_dir, run_dir_config, settings_differing

    config = RunConfig(methods=("standard",), epochs=3)
    open_run_dir(tmp_path, config, resume=False)
    with pytest.raises(RunDirError, match="--resume"):
        open_run_dir(tmp_path, RunConfig(methods=("standard",), epochs=3), resume=False)
    with pytest.raises(RunDirError, match=r"other settings \(epochs\)"):
        open_run_dir(tmp_path, RunConfig(methods=("standard",), epochs=4), resume=True)
    # a config.json written before a setting existed resumes at that setting's default, and only there
    saved = json.loads(run_dir_config(tmp_path).read_text())
    del saved["patience"]
    run_dir_config(tmp_path).write_text(json.dumps(saved))
    assert settings_differing(saved, config.to_dict()) == []
    assert settings_differing(saved, RunConfig(methods=("iterative",), epochs=3).to_dict()) == ["methods"]
    assert settings_differing(saved, RunConfig(methods=("iterative",), epochs=3).to_dict(), ignore=("methods",)) == []
    open_run_dir(tmp_path, RunConfig(methods=("iterative",), epochs=3), resume=True)
    assert json.loads(run_dir_config(tmp_path).read_text())["methods"] == ["standard", "iterative"]
    with pytest.raises(RunDirError, match="patience"):
        open_run_dir(tmp_path, RunConfig(methods=("standard",), epochs=3, validation=10, patience=2), resume=True)


def test_a_run_made_before_the_iterative_defaults_changed_is_read_as_made_without_them(tmp_path):
    from pyro_iterative.experiments.config import RunDirError, open_run_dir, run_dir_config, settings_differing

    new = RunConfig(methods=("iterative",), epochs=3)
    assert new.normalize_hidden and new.antithetic and new.gate_init and new.final_check  # independent datapoints: on
    dmm = RunConfig(model="dmm")
    assert not dmm.normalize_hidden and not dmm.antithetic and not dmm.gate_init and not dmm.final_check  # sequences
    old = RunConfig(methods=("iterative",), epochs=3, normalize_hidden=False, antithetic=False, gate_init=False,
                    final_check=False)
    open_run_dir(tmp_path, old, resume=False)
    saved = json.loads(run_dir_config(tmp_path).read_text())
    for name in ("normalize_hidden", "antithetic", "gate_init", "final_check"):
        del saved[name]  # as written before the settings existed
    run_dir_config(tmp_path).write_text(json.dumps(saved))
    before = RunConfig.from_saved(saved)
    assert not before.normalize_hidden and not before.antithetic and not before.gate_init and not before.final_check
    assert settings_differing(saved, new.to_dict()) == ["antithetic", "final_check", "gate_init", "normalize_hidden"]
    with pytest.raises(RunDirError, match=r"other settings \(antithetic, final_check, gate_init, normalize_hidden\)"):
        open_run_dir(tmp_path, new, resume=True)
    open_run_dir(tmp_path, old, resume=True)
    # a checkpoint's key names a setting only where it differs from what earlier checkpoints were made with
    assert not {"normalize_hidden", "antithetic", "gate_init", "final_check"} & set(old.training_key("iterative"))
    assert new.training_key("iterative")["normalize_hidden"] is True and new.training_key("iterative")["antithetic"]
    assert new.training_key("iterative")["gate_init"] is True and new.training_key("semi_amortized")["final_check"]


@pytest.mark.parametrize("flags, expected", [
    ([], (True, True, True, True, True)),
    (["--normalize-hidden", "--antithetic", "--clip-encoder-gradient", "--gate-init", "--final-check"],
     (True, True, True, True, True)),
    (["--no-normalize-hidden", "--no-antithetic", "--no-clip-encoder-gradient", "--no-gate-init", "--no-final-check"],
     (False, False, False, False, False))])
def test_the_guides_defaults_on_the_command_line(tmp_path, flags, expected):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--method", "iterative", *flags, "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    settings = ("normalize_hidden", "antithetic", "clip_encoder_gradient", "gate_init", "final_check")
    assert tuple(saved[name] for name in settings) == expected
