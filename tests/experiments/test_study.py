"""The tuning study: equal budgets, a validation split that never holds a test digit, selection on validation ELBO
before the test set is read, and resume after a kill."""

import dataclasses
import json
import subprocess
import sys
import time

import pytest
import torch

from pyro_iterative.cli import main
from pyro_iterative.data import load_mnist5k
from pyro_iterative.experiments import study
from pyro_iterative.experiments.config import RunConfig
from pyro_iterative.experiments.datasets import evaluation_data, validation_data, validation_rows
from pyro_iterative.experiments.engine import best_epoch
from pyro_iterative.experiments.study import STUDY_GRID, grid_cells, run_study, selected_cells, study_config

pytest.importorskip("mlxtend")

TINY = {"epochs": 3, "patience": 1, "validation": 40, "train_size": 64, "eval_datapoints": 30, "ll_datapoints": 4,
        "gap_datapoints": 6, "gap_steps": 5, "is_samples": 20, "local_steps": 3, "comparison_steps": 5,
        "reference_steps": 3, "latent_dim": 4, "hidden": 32, "iterations": 2, "epochs_2d": 1}
TINY_ARGS = [arg for key, value in TINY.items() if key != "epochs_2d"
             for arg in ("--" + key.replace("_", "-"), str(value))]


def test_every_method_gets_the_same_number_of_configurations():
    sizes = {method: len(grid_cells(study_config(), method)) for method in STUDY_GRID}
    assert len(set(sizes.values())) == 1 and min(sizes.values()) >= 4, sizes
    names = [cell.name for cell in grid_cells(study_config(), "iterative")]
    assert len(set(names)) == len(names)
    cell = grid_cells(study_config(), "semi_amortized")[-1]
    assert (cell.config.lr, cell.config.inner_lr) == (3e-3, 1.0) and cell.config.validation == 500


def test_the_validation_split_is_stratified_and_never_holds_a_test_digit():
    config = RunConfig(validation=500, seed=3)
    split = load_mnist5k(seed=0)
    train, valid = validation_rows(config, len(split.x_train))
    assert len(valid) == 500 and len(train) == len(split.x_train) - 500
    assert set(train.tolist()).isdisjoint(valid.tolist())
    assert torch.bincount(split.y_train[valid]).tolist() == [50] * 10  # stratified by digit class
    source_rows = set(split.train_index[valid].tolist())
    assert source_rows.isdisjoint(split.test_index.tolist())  # no validation digit is a test digit
    x_train, x_eval = evaluation_data(dataclasses.replace(config, binarize="none"))
    x_valid = validation_data(dataclasses.replace(config, binarize="none"))
    assert torch.equal(x_valid, split.x_train[valid]) and torch.equal(x_train, split.x_train[train])
    other_seed = validation_rows(RunConfig(validation=500, seed=4), len(split.x_train))[1]
    assert not torch.equal(torch.sort(other_seed).values, torch.sort(valid).values)  # seeded


def test_patience_without_a_validation_set_is_refused():
    with pytest.raises(ValueError, match="--validation N"):
        RunConfig(patience=3)
    with pytest.raises(ValueError, match="must leave training data"):
        validation_rows(RunConfig(validation=100), 100)


@pytest.mark.slow
def test_selection_reads_validation_only_and_the_test_set_once(tmp_path, monkeypatch):
    """Replace the test set by NaNs: training and selection must not notice; only the measurement may read it."""
    base = study_config(**TINY, methods=("standard", "variational_em", "variational_em_reference"))
    x_train, x_test = evaluation_data(base)
    poisoned = torch.full_like(x_test, float("nan"))
    monkeypatch.setattr(study, "evaluation_data", lambda config: (x_train, poisoned))
    measured = []

    def measure(config, method, model, guide, history, x_eval):
        assert x_eval is poisoned
        # every grid has finished and been selected before the first test measurement
        assert all(cell.done(tmp_path) for m in ("standard", "variational_em") for cell in grid_cells(base, m))
        measured.append((method, config.lr, config.inner_lr))
        return {"label": method, "test_elbo": 0.0, "history": history}

    monkeypatch.setattr(study, "measure_method", measure)
    metrics = run_study(tmp_path, base, quiet=True)
    for method in ("standard", "variational_em"):
        rows = metrics["study"]["grid"][method]
        assert all(torch.isfinite(torch.tensor(row["validation_elbo"])).all() for row in rows)  # no NaN test reached
        chosen = max(rows, key=lambda row: row["best_validation_elbo"])
        assert chosen["selected"] and metrics["study"]["selected"][method] == chosen["configuration"]
        assert sum(row["selected"] for row in rows) == 1
    selected = selected_cells(base, tmp_path)
    assert measured == [(m, selected[m].config.lr, selected[m].config.inner_lr) for m in base.methods]
    # the reference row is trained at variational EM's selected configuration, with its own method
    assert selected["variational_em_reference"].settings == selected["variational_em"].settings
    assert metrics["methods"]["variational_em_reference"]["test_elbo"] == 0.0


@pytest.mark.slow
def test_a_study_killed_mid_grid_resumes_to_the_same_report(tmp_path):
    args = ["compare", "--study", *TINY_ARGS, "--methods", "standard,iterative", "--quiet"]
    main([*args, "--out", str(tmp_path / "whole")])
    process = subprocess.Popen([sys.executable, "-m", "pyro_iterative", *args, "--out", str(tmp_path / "cut")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "cut" / "grid" / "iterative" / "lr=0.001,highway=False" / "iterative" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert checkpoint.exists(), "the study never reached the iterative grid"
    assert not (tmp_path / "cut" / "metrics.json").exists()
    with pytest.raises(SystemExit, match="already holds a study"):
        main([*args, "--out", str(tmp_path / "cut")])
    main([*args, "--out", str(tmp_path / "cut"), "--resume"])
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert whole["study"]["selected"] == cut["study"]["selected"]
    for name in whole["methods"]:
        for key in ("test_elbo", "log_likelihood", "amortization_gap", "best_epoch", "selected"):
            assert cut["methods"][name][key] == whole["methods"][name][key], (name, key)
        history = cut["methods"][name]["history"]
        assert best_epoch(history) == cut["methods"][name]["best_epoch"]
    report = (tmp_path / "cut" / "report.md").read_text()
    assert "## Tuning study" in report and "## Paired differences" in report
    for method, name in cut["study"]["selected"].items():
        assert f"| {name} |" in report and cut["methods"][method]["selected"] == name


@pytest.mark.slow
def test_shares_split_a_study_between_processes(tmp_path, capsys):
    args = ["compare", "--study", *TINY_ARGS, "--methods", "standard,iterative", "--quiet", "--out", str(tmp_path)]
    main([*args, "--share", "standard"])
    assert "is not finished" in capsys.readouterr().out
    assert not (tmp_path / "metrics.json").exists()
    main([*args, "--share", "iterative", "--resume"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"standard", "iterative"}
    with pytest.raises(SystemExit, match="outside the study"):
        main([*args, "--share", "semi_amortized", "--resume"])


def test_a_study_refuses_methods_it_cannot_run():
    with pytest.raises(SystemExit, match="add variational_em to --methods"):
        main(["compare", "--study", "--methods", "standard,variational_em_reference"])
    with pytest.raises(SystemExit, match="'per_datapoint' is not one of them"):
        main(["compare", "--study", "--methods", "per_datapoint"])


def test_share_without_study_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--share", "standard"])
    assert "add --study" in capsys.readouterr().err


def test_a_run_with_a_validation_set_watches_it_and_never_the_test_set(tmp_path, monkeypatch, capsys):
    from pyro_iterative.experiments import comparison

    watched = []
    real = comparison.train_method

    def recording(config, method, x_train, x_eval, run_dir, **kwargs):
        watched.append(x_eval)
        return real(config, method, x_train, x_eval, run_dir, **kwargs)

    monkeypatch.setattr(comparison, "train_method", recording)
    args = ["train", "--method", "standard", "--validation", "40", "--patience", "1", "--epochs", "2", "--train-size",
            "64", "--latent-dim", "4", "--hidden", "32", "--eval-datapoints", "30", "--quiet", "--out",
            str(tmp_path / "run")]
    assert main(args) == 0
    config = RunConfig(validation=40, patience=1, epochs=2, train_size=64, latent_dim=4, hidden=32, eval_datapoints=30)
    assert len(watched) == 1 and torch.equal(watched[0], validation_data(config))
    assert (tmp_path / "run" / "standard" / "best.pt").exists()
    with pytest.raises(SystemExit):
        main(["train", "--patience", "3", "--out", str(tmp_path / "other")])
    assert "--validation N" in capsys.readouterr().err


def test_lightning_training_refuses_a_validation_set(tmp_path, capsys):
    pytest.importorskip("lightning")
    with pytest.raises(SystemExit):
        main(["train", "--accelerator", "cpu", "--validation", "40", "--out", str(tmp_path / "run")])
    assert "read by the single-process loop only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_recorded_study_is_resumed_only_with_the_networks_it_was_run_with(tmp_path):
    """docs/study was run before normalised hidden layers, antithetic pairs, the encoders' gradient clip and the gates'
    initial bias were the defaults, and before the semi-amortized guide's final check: its settings are those of
    --no-normalize-hidden --no-antithetic --no-clip-encoder-gradient --no-gate-init --no-final-check, as the docs say,
    and a resume with today's defaults is refused."""
    from pathlib import Path

    from pyro_iterative.experiments.config import RunDirError

    recorded = json.loads((Path(__file__).parents[2] / "docs" / "study" / "study.json").read_text())
    (tmp_path / "study.json").write_text(json.dumps(recorded))
    with pytest.raises(RunDirError,
                       match=r"other settings \(antithetic, clip_encoder_gradient, final_check, gate_init, "
                             r"normalize_hidden\)"):
        study._open_study(tmp_path, study_config(device=recorded["device"]), resume=True)
    with pytest.raises(RunDirError, match=r"other settings \(clip_encoder_gradient, final_check, gate_init\)"):
        study._open_study(tmp_path, study_config(device=recorded["device"], normalize_hidden=False, antithetic=False),
                          resume=True)
    study._open_study(tmp_path, study_config(device=recorded["device"], normalize_hidden=False, antithetic=False,
                                             clip_encoder_gradient=False, gate_init=False, final_check=False),
                      resume=True)
