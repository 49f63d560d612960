import math
import re

import pytest
import torch

from mres.training.checkpoint import load_checkpoint, save_checkpoint
from mres.training.data import load_dataset
from mres.errors import DivergedError, UserError
from mres.models import build_model
from mres.recipe import DatasetConfig, ScheduleConfig, TrainConfig
from mres.training.fit import fit, lr_factor
from torch.optim.optimizer import register_optimizer_step_pre_hook


def small_data(n_train=300, n_test=100, size=8):
    return load_dataset(DatasetConfig(name="synthetic", synthetic={"n_train": n_train, "n_test": n_test, "size": size}))


def cfg(**kw):
    base = dict(epochs=3, batch_size=32, deterministic=True, channels_last=False,
                optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    base.update(kw)
    return TrainConfig(**base)


def model_for(data, pool=False):
    torch.manual_seed(0)
    return build_model("cnn", {"pool": pool, "width1": 8, "width2": 8}, data.in_channels, data.num_classes,
                       data.resolution)


def test_training_learns_the_synthetic_classes():
    data = small_data()
    m = fit(model_for(data), data, cfg(epochs=4), progress=False)
    assert m[-1]["test_acc"] > 0.6  # 10 classes: chance is 0.1
    assert m[-1]["train_loss"] < m[0]["train_loss"]


@pytest.mark.parametrize("name,end", [("cosine", 0.0), ("linear-to-zero", 0.0), ("constant", 1.0), ("step", 0.01)])
def test_schedules_end_where_they_should(name, end):
    s = ScheduleConfig(name=name)
    assert lr_factor(s, 0, 10, 5) == pytest.approx(1.0)
    assert lr_factor(s, 50, 10, 5) == pytest.approx(end, abs=1e-6)


def test_inverse_sqrt_is_the_thesis_sequence():
    s = ScheduleConfig(name="inverse-sqrt")
    for e in (1, 2, 7):
        assert lr_factor(s, (e - 1) * 10 + 3, 10, 10) == pytest.approx(1 / math.sqrt(0.5 * e))


def test_checkpoint_is_plain_and_loads_weights_only(tmp_path):
    data = small_data()
    ck = tmp_path / "c" / "last.pt"
    fit(model_for(data), data, cfg(epochs=1), ckpt_path=ck, progress=False,
        extra={"recipe": {"a": 1}, "resolution": 8, "arch": {"name": "cnn"}})
    raw = torch.load(ck, weights_only=True)  # would raise on any non-plain object
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "recipe", "resolution", "metrics", "versions"} <= set(raw)
    assert raw["epoch"] == 1
    assert not list(ck.parent.glob("*.tmp"))  # no temp file left behind


class Gadget:
    """A class of this test module: torch's allow-list may accept it some day, mres must not."""

    def __init__(self, x=1):
        self.x = x


@pytest.mark.parametrize("evil,path", [
    (ValueError("x"), "['x']"),  # torch 2.14's weights_only unpickler accepts this instance
    (Gadget(), "['x']"),
    ({"inner": [1, 2.0, Gadget()]}, "['x']['inner'][2]"),
])
def test_checkpoint_with_arbitrary_object_is_refused(tmp_path, evil, path):
    p = tmp_path / "evil.pt"
    torch.save({"format": "mres-checkpoint/1", "x": evil}, p)
    try:  # whatever torch's allow-list does with it, the loader must refuse and name the key path
        torch.serialization.add_safe_globals([Gadget])
        with pytest.raises(UserError, match=r"cannot load checkpoint .*key " + re.escape(path) + " holds a"):
            load_checkpoint(p)
    finally:
        torch.serialization.clear_safe_globals()


def test_checkpoint_loader_messages_are_clear(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="the file is empty"):
        load_checkpoint(empty)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="cannot load checkpoint") as exc:
        load_checkpoint(junk)
    assert "weights_only=False" not in str(exc.value) and "False" not in str(exc.value)


def test_save_removes_temp_files_of_a_killed_writer(tmp_path):
    ck = tmp_path / "last.pt"
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.pt.abc123.tmp"  # another file's temp: not ours to delete
    other.write_bytes(b"x")
    save_checkpoint(ck, {"model": {"w": torch.ones(2)}})
    assert not stale.exists() and other.exists()
    assert load_checkpoint(ck)["model"]["w"].sum() == 2


def test_resume_matches_uninterrupted_run(tmp_path):
    data = small_data()
    full = fit(model_for(data), data, cfg(epochs=3), progress=False)
    ck = tmp_path / "last.pt"
    # interrupt after epoch 1 by stopping a 3-epoch run with an exception
    class Stop(Exception):
        pass

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(model_for(data), data, cfg(epochs=3), ckpt_path=ck, progress=False, on_epoch=stop_after_first)
    state = load_checkpoint(ck)
    assert state["epoch"] == 1
    resumed = fit(model_for(data), data, cfg(epochs=3), ckpt_path=ck, progress=False, resume=state)
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(full)


def test_non_finite_loss_stops_with_epoch_and_step(tmp_path):
    data = small_data()
    ck = tmp_path / "last.pt"
    with pytest.raises(DivergedError) as e:
        fit(model_for(data), data, cfg(epochs=3, optimizer={"name": "sgd", "lr": 1e6, "momentum": 0.9}),
            ckpt_path=ck, progress=False)
    assert e.value.epoch >= 1 and e.value.step >= 1 and "epoch" in str(e.value)


def test_non_finite_flag_is_read_every_n_steps_and_keeps_the_first_bad_step(tmp_path):
    # a loss that turns NaN at step 3 (a forward hook): with check_every 4 the loop runs on to step 4,
    # then reports step 3 — the device flag keeps the first bad step without a host read per step
    data = small_data()
    model = model_for(data)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    model.register_forward_hook(poison)
    steps: list[int] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: steps.append(1))
    try:
        with pytest.raises(DivergedError) as e:
            fit(model, data, cfg(epochs=1, batch_size=8, check_every=4), progress=False)
    finally:
        handle.remove()
    assert (e.value.epoch, e.value.step) == (1, 3) and "step 3" in str(e.value)
    assert len(steps) == 3  # steps 1-3 stepped, the read at step 4 stopped it (a read per step: 2)
