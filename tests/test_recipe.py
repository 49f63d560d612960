from pathlib import Path

import pytest

from mres.errors import UserError
from mres.recipe import CoarseToFineRecipe, TrainRecipe, apply_overrides, load_recipe, parse_yaml, validate_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_defaults_validate():
    r = validate_recipe({}, TrainRecipe)
    assert r.dataset.name == "fashion-mnist" and r.resolution == 28


def test_scientific_notation_is_a_number():
    assert parse_yaml("a: 1e-3\nb: 5.0e-4\nc: -2E+2\nd: 1.5")["a"] == pytest.approx(1e-3)
    assert isinstance(parse_yaml("a: 1e-3")["a"], float)
    assert parse_yaml("a: 1e-3")["a"] == 0.001
    assert parse_yaml("v: 1.0.2")["v"] == "1.0.2"


def test_duplicate_key_is_an_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(UserError, match="duplicate key 'seed'"):
        load_recipe(p)


def test_all_problems_reported_at_once(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: {name: cnn, pool: true}\nresolution: 27\ntrain: {epochs: many, batchsize: 3}\n")
    with pytest.raises(UserError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "train.batchsize: unknown key" in msg and "batch_size" in msg  # names the allowed keys
    assert "train.epochs" in msg and "many" in msg
    assert "resolution" in msg and "27" in msg


def test_model_option_typo_and_bad_resolution(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: {name: cnn, pol: true}\nresolution: 14\n")
    with pytest.raises(UserError, match=r"model.pol: unknown key"):
        load_recipe(p)
    with pytest.raises(UserError, match="unknown model"):
        validate_recipe({"model": {"name": "vgg"}}, TrainRecipe)
    with pytest.raises(UserError, match="not reachable"):
        validate_recipe({"resolution": 12}, TrainRecipe)
    with pytest.raises(UserError, match=r"dataset.name: must be one of"):
        validate_recipe({"dataset": {"name": "imagenet"}}, TrainRecipe)


def test_overrides():
    raw = apply_overrides({}, ["dataset.name=npz", "dataset.path=x.npz", "train.epochs=3",
                              "train.optimizer.lr=1e-2", "model.pool=true"])
    r = validate_recipe(raw, TrainRecipe)
    assert r.dataset.name == "npz" and r.train.epochs == 3 and r.train.optimizer.lr == 0.01
    assert r.model.options() == {"pool": True}
    with pytest.raises(UserError, match="key.path=value"):
        apply_overrides({}, ["trainepochs"])


def test_schedule_string_or_block():
    r = validate_recipe({"train": {"schedule": "step"}}, TrainRecipe)
    assert r.train.schedule.name == "step"
    r = validate_recipe({"train": {"schedule": {"name": "cosine", "warmup_epochs": 1}}}, TrainRecipe)
    assert r.train.schedule.warmup_epochs == 1
    with pytest.raises(UserError, match="train.schedule.name"):
        validate_recipe({"train": {"schedule": "triangle"}}, TrainRecipe)


def test_c2f_resolutions_must_double():
    with pytest.raises(UserError, match="twice"):
        validate_recipe({"resolutions": [7, 28]}, CoarseToFineRecipe)
    with pytest.raises(UserError, match="strategies"):
        validate_recipe({"strategies": ["magic"]}, CoarseToFineRecipe)
    assert validate_recipe({"resolutions": [7, 14, 28]}, CoarseToFineRecipe).resolutions == [7, 14, 28]


def test_npz_needs_a_path():
    with pytest.raises(UserError, match="dataset.path"):
        validate_recipe({"dataset": {"name": "npz"}}, TrainRecipe)


def test_analysis_block_is_checked_before_any_training():
    bad = ["analysis.landscape.grid=1x5", "analysis.landscape.range=1:-1", "analysis.features.samples=[-1]"]
    with pytest.raises(UserError) as exc:
        load_recipe(RECIPES / "c2f_cnn_fashion.yaml", bad, CoarseToFineRecipe)
    msg = str(exc.value)
    for key in ("grid '1x5'", "range '1:-1'", "analysis.features.samples"):
        assert key in msg, (key, msg)
    with pytest.raises(UserError, match="analysis.trial: 3, but the run has trials 0..0"):
        load_recipe(RECIPES / "c2f_cnn_fashion.yaml", ["analysis.trial=3"], CoarseToFineRecipe)
    ok = load_recipe(RECIPES / "c2f_cnn_fashion.yaml", ["analysis.landscape.grid=9"], CoarseToFineRecipe)
    assert ok.analysis.landscape.grid == "9"  # an unquoted number from --set is a 1-D grid


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_recipe_validates_unchanged(path):
    kind = CoarseToFineRecipe if path.name.startswith("c2f_") or "resolutions:" in path.read_text() else TrainRecipe
    r = load_recipe(path, [], kind)
    if kind is CoarseToFineRecipe:  # the time-to-accuracy keys default to the behaviour before them
        assert r.schedule_scope == "phase" and not r.carry_optimizer and not r.coarse_batch_scaling
        assert r.grid_epochs()[0] == r.coarse.epochs and r.fine_only.epochs is None
