"""The training engine with checkpoints: atomic files, refusal of bad checkpoints, and exact resume."""

import dataclasses

import pyro
import pytest
import torch
from pyro.nn import PyroModule

from pyro_iterative import AmortizedGuide, IterativeGuide
from pyro_iterative.experiments.checkpoints import CheckpointError, TrainingCheckpoint, write_json
from pyro_iterative.experiments.engine import TrainingError, best_epoch, stopped_early, train
from pyro_iterative.models import LinearGaussian


class Interrupt(Exception):
    pass


def run(tmp_path, epochs, stop_after=None, resume=False, guide_class=IterativeGuide):
    """Train a small model; with ``stop_after``, die (like a killed process) once that epoch is checkpointed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = LinearGaussian.orthogonal(data_dim=6, latent_dim=2, seed=0, learn=True)
    x = model.sample(120, seed=1).detach()
    options = {"num_iterations": 2} if guide_class is IterativeGuide else {}
    guide = guide_class(model, hidden_sizes=(16,), **options)
    calls = []

    def evaluate():
        calls.append(None)
        if stop_after is not None and len(calls) > stop_after:
            raise Interrupt  # after epoch `stop_after` was checkpointed, before the next one is
        return float(guide.elbo_trajectory(x[:20])[-1].mean()), 0.0

    history = train(model, guide, x, epochs=epochs, batch_size=30, lr=1e-2, binarize_mode="none", evaluate=evaluate,
                    checkpoint=tmp_path / "checkpoint.pt", config={"seed": 0, "epochs": epochs}, resume=resume,
                    quiet=True)
    return model, guide, history


@pytest.mark.parametrize("guide_class", [IterativeGuide, AmortizedGuide])  # the encoder's gradient clip has a state
def test_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, guide_class):
    model, guide, history = run(tmp_path / "whole", epochs=4, guide_class=guide_class)
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", epochs=4, stop_after=2, guide_class=guide_class)
    assert TrainingCheckpoint.load(tmp_path / "cut" / "checkpoint.pt").epoch == 2
    resumed_model, resumed_guide, resumed_history = run(tmp_path / "cut", epochs=4, resume=True,
                                                        guide_class=guide_class)
    strip = [{k: v for k, v in record.items() if k != "seconds"} for record in history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed_history] == strip
    for a, b in zip(list(model.parameters()) + list(guide.parameters()),
                    list(resumed_model.parameters()) + list(resumed_guide.parameters())):
        assert torch.equal(a, b)


def test_checkpoint_of_another_configuration_is_refused_and_left_alone(tmp_path):
    run(tmp_path, epochs=1)
    path = tmp_path / "checkpoint.pt"
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"another configuration \(epochs: 1 in the file, 3 now\)"):
        run(tmp_path, epochs=3, resume=True)
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_is_refused_with_its_name(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    TrainingCheckpoint(config={"a": 1}, engine="svi", epoch=1, model={}, guide={}, optim={}).save(path)
    data = path.read_bytes()
    damaged = data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 10
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="checkpoint.pt is unreadable.*left as it is"):
        TrainingCheckpoint.load(path)
    assert path.read_bytes() == damaged


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"ok": 1})

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        write_json(path, {"bad": Unserializable()})
    assert path.read_text().strip() == '{\n  "ok": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


@pytest.mark.filterwarnings("ignore:Encountered")
def test_non_finite_loss_stops_with_epoch_and_step(tmp_path):
    class GoesBad(PyroModule):
        def __init__(self):
            super().__init__()
            self.base = LinearGaussian.orthogonal(data_dim=6, latent_dim=2, seed=0)
            self.calls = 0

        def forward(self, x, subsample_size=None):
            self.calls += 1
            self.base(x, subsample_size=subsample_size)
            if self.calls > 40:  # during the second epoch
                pyro.factor("fault", torch.tensor(float("-inf"), dtype=x.dtype))

    model = GoesBad()
    x = model.base.sample(60, seed=1)
    guide = IterativeGuide(model, num_iterations=1, hidden_sizes=(8,))
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingError, match=r"epoch 2, step \d+.*last good checkpoint"):
        train(model, guide, x, epochs=3, batch_size=6, binarize_mode="none", quiet=True, checkpoint=path)
    assert TrainingCheckpoint.load(path).epoch == 1


def test_checkpoint_of_the_lightning_loop_is_refused_with_the_way_out(tmp_path):
    run(tmp_path, epochs=1)
    path = tmp_path / "checkpoint.pt"
    state = TrainingCheckpoint.load(path)
    dataclasses.replace(state, engine="lightning").save(path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"written by PyTorch Lightning .*resume it the same way"):
        run(tmp_path, epochs=1, resume=True)
    assert path.read_bytes() == before


def scripted_run(tmp_path, scores, epochs, patience, resume=False):
    """Train with an evaluate() that returns ``scores`` in turn; record the guide's state after each epoch."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = LinearGaussian.orthogonal(data_dim=6, latent_dim=2, seed=0, learn=True)
    x = model.sample(60, seed=1).detach()
    guide = IterativeGuide(model, num_iterations=1, hidden_sizes=(8,))
    states = []
    done = len(TrainingCheckpoint.load(tmp_path / "checkpoint.pt").history) if resume else 0
    remaining = iter(scores[done:])

    def evaluate():
        states.append({k: v.clone() for k, v in guide.state_dict().items()})
        return next(remaining), 0.0

    history = train(model, guide, x, epochs=epochs, batch_size=30, lr=1e-2, binarize_mode="none", evaluate=evaluate,
                    checkpoint=tmp_path / "checkpoint.pt", best_checkpoint=tmp_path / "best.pt", patience=patience,
                    config={"epochs": epochs}, resume=resume, quiet=True)
    return history, states


def test_early_stopping_ends_after_patience_epochs_and_keeps_the_best_epoch(tmp_path):
    scores = [-10.0, -9.0, -9.5, -9.0, -8.0, -7.0]  # best at epoch 2; epochs 3 and 4 do not beat it (a tie does not)
    history, states = scripted_run(tmp_path, scores, epochs=6, patience=2)
    assert [record["epoch"] for record in history] == [1, 2, 3, 4]
    assert best_epoch(history) == 2 and stopped_early(history, 2)
    best = TrainingCheckpoint.load(tmp_path / "best.pt")
    assert best.epoch == 2
    for name, value in best.guide.items():
        assert torch.equal(value, states[1][name])  # the guide as it was evaluated at epoch 2
    assert TrainingCheckpoint.load(tmp_path / "checkpoint.pt").epoch == 4
    # resuming a stopped run trains nothing more
    again, states = scripted_run(tmp_path, scores, epochs=6, patience=2, resume=True)
    assert len(again) == 4 and states == []


def test_without_patience_every_epoch_runs_and_the_best_is_still_kept(tmp_path):
    history, _ = scripted_run(tmp_path, [-3.0, -5.0, -6.0, -7.0], epochs=4, patience=None)
    assert len(history) == 4
    assert TrainingCheckpoint.load(tmp_path / "best.pt").epoch == 1


def test_best_epoch_and_stopped_early_on_histories():
    def records(*scores):
        return [{"epoch": i + 1, "test_elbo": s} for i, s in enumerate(scores)]

    assert best_epoch([]) is None and not stopped_early([], 1)
    assert best_epoch(records(float("nan"), -2.0, -1.0, -1.0)) == 3  # NaN skipped, earliest of ties
    assert not stopped_early(records(-3.0, -2.0, -2.5), 2)
    assert stopped_early(records(-3.0, -2.0, -2.5, -2.1), 2)
    assert not stopped_early(records(-3.0, -2.0, -2.5, -2.1), None)


def test_patience_needs_an_evaluation(tmp_path):
    model = LinearGaussian.orthogonal(data_dim=6, latent_dim=2, seed=0, learn=True)
    with pytest.raises(ValueError, match="patience must be a positive integer and needs an evaluate"):
        train(model, IterativeGuide(model), model.sample(10, seed=1).detach(), epochs=1, patience=2, quiet=True)
