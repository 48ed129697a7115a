"""The one description of an epoch (EpochPlan, EpochRecord) and the one checkpoint schema (TrainingCheckpoint)."""

import dataclasses
import math

import pytest
import torch

from pyro_iterative.experiments.checkpoints import CheckpointError, TrainingCheckpoint
from pyro_iterative.experiments.engine import EpochPlan, EpochRecord, TrainingError


def test_plan_draws_the_data_of_each_binarization():
    x = torch.rand(10, 6, generator=torch.Generator().manual_seed(0))
    none = EpochPlan(x, epochs=2, batch_size=4, binarize_mode="none")
    assert none.epoch_data(none.fixed_data()) is x and none.steps == 2
    static = EpochPlan(x, epochs=2, batch_size=4, binarize_mode="static", seed=3)
    fixed = static.fixed_data()
    assert set(fixed.unique().tolist()) <= {0.0, 1.0} and torch.equal(static.fixed_data(), fixed)
    assert static.epoch_data(fixed) is fixed  # the same draw every epoch
    dynamic = EpochPlan(x, epochs=2, batch_size=4, binarize_mode="dynamic")
    first = dynamic.epoch_data(dynamic.fixed_data(), torch.Generator().manual_seed(1))
    again = dynamic.epoch_data(dynamic.fixed_data(), torch.Generator().manual_seed(1))
    other = dynamic.epoch_data(dynamic.fixed_data(), torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_plan_refuses_bad_settings_and_splits_batches_across_processes():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="Unknown binarization"):
        EpochPlan(x, epochs=1, binarize_mode="sometimes")
    with pytest.raises(ValueError, match="training set is empty"):
        EpochPlan(x[:0], epochs=1)
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        EpochPlan(x, epochs=1, batch_size=0)
    plan = EpochPlan(x, epochs=1, batch_size=6, binarize_mode="none")
    assert plan.batch_per_process(2, shard=5) == 3
    with pytest.raises(ValueError, match="does not split evenly across 4 processes"):
        plan.batch_per_process(4, shard=2)
    with pytest.raises(ValueError, match="fewer than its batch of 3"):
        plan.batch_per_process(2, shard=2)


def test_plan_records_and_checks_losses():
    calls = []
    plan = EpochPlan(torch.zeros(4, 1), epochs=3, binarize_mode="none", evaluate=lambda: calls.append(1) or (-5.0, 0.5))
    record = plan.record(2, 12.5, [3.0, 5.0])
    assert record == EpochRecord(epoch=2, seconds=12.5, train_loss=4.0, test_elbo=-5.0, test_elbo_se=0.5)
    assert calls == [1] and record.as_dict()["train_loss"] == 4.0
    assert record.line(3, 0) == "epoch   2/3  train loss     4.000  held-out ELBO    -5.000 ± 0.500  (  12.5 s)"
    assert record.line(3, 7).endswith("[7 non-finite ELBO gradients contained so far]")
    assert math.isnan(EpochPlan(torch.zeros(4, 1), epochs=1, binarize_mode="none").record(1, 0.0, []).test_elbo)
    plan.check_loss(1.0, 1, 1)
    with pytest.raises(TrainingError, match=r"epoch 2, step 7; the last good checkpoint \(ck.pt\) is kept"):
        plan.check_loss(float("nan"), 2, 7, "ck.pt")


def _checkpoint(**changes) -> TrainingCheckpoint:
    state = TrainingCheckpoint(config={"seed": 0}, engine="svi", epoch=1, model={"w": torch.ones(2)}, guide={},
                               optim={}, history=[{"epoch": 1}], seconds=2.0)
    return dataclasses.replace(state, **changes)


def test_checkpoint_round_trip_and_its_on_disk_dict(tmp_path):
    path = tmp_path / "checkpoint.pt"
    _checkpoint(nonfinite_gradients=3).save(path)
    loaded = TrainingCheckpoint.load(path, config={"seed": 0}, engine="svi")
    assert loaded.epoch == 1 and loaded.nonfinite_gradients == 3 and torch.equal(loaded.model["w"], torch.ones(2))
    raw = torch.load(path, weights_only=False)
    assert raw["schema"] == 1 and raw["epoch"] == 1 and raw["engine"] == "svi"
    with pytest.raises(ValueError, match="Unknown training loop"):
        _checkpoint(engine="horovod")


def test_checkpoints_of_the_other_loop_or_before_the_schema_are_refused_and_left_alone(tmp_path):
    path = tmp_path / "checkpoint.pt"
    _checkpoint(engine="lightning", world_size=2).save(path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="written by PyTorch Lightning.*start the run with the single-process"):
        TrainingCheckpoint.load(path, engine="svi")
    assert TrainingCheckpoint.load(path, engine="lightning").world_size == 2
    old = tmp_path / "old.pt"
    torch.save({"config": {}, "epoch": 1, "model": {}, "guide": {}}, old)  # as written before the schema existed
    with pytest.raises(CheckpointError, match="another version of pyro-iterative.*cannot be resumed"):
        TrainingCheckpoint.load(old)
    assert path.read_bytes() == before
