"""The strategy table (mres/strategies.py) is the only list of strategies, and fit's hooks fire where
mres/training/hooks.py says."""

import typing

import pytest
import torch

from mres.c2f import job as c2f
from mres.grids import transfer
from mres.training.data import load_dataset
from mres.errors import UserError
from mres.training.hooks import FitHook
from mres.models import build_model
from mres.recipe import CoarseToFineRecipe, DatasetConfig, TrainConfig, validate_recipe
from mres.strategies import BASELINE_ORDER, DEFAULTS, STRATEGIES, Variant, variants
from mres.training.fit import fit


def _accepted_by_recipe() -> set[str]:
    (literal,) = typing.get_args(CoarseToFineRecipe.model_fields["strategies"].annotation)
    return set(typing.get_args(literal))


def test_the_recipe_accepts_exactly_the_tables_names():
    assert _accepted_by_recipe() == set(STRATEGIES)
    for name in STRATEGIES:  # each validates on its own
        assert validate_recipe({"strategies": [name]}, CoarseToFineRecipe).strategies == [name]
    with pytest.raises(UserError) as exc:
        validate_recipe({"strategies": ["galerkin-data-typo"]}, CoarseToFineRecipe)
    assert "strategies.0" in str(exc.value) and all(n in str(exc.value) for n in STRATEGIES)


def test_the_default_strategies_are_those_of_before_the_table():
    assert list(DEFAULTS) == ["fresh", "fine-only", "transfer", "galerkin", "galerkin-reg"]
    assert CoarseToFineRecipe().strategies == list(DEFAULTS)


def test_every_record_is_consistent_with_the_code_that_runs_it():
    for name, s in STRATEGIES.items():
        assert s.name == name and s.about
        assert (s.start is None) == (not s.needs_coarse), name  # a transfer needs a rule, a new model none
        if s.start is not None:
            assert s.start in transfer.STRATEGIES and s.start != "fresh", name
        assert s.trains_on in ("cascade", "fine-subset", "budget"), name
        assert s.needs_coarse == (s.trains_on == "cascade"), name
        assert set(s.hooks) <= set(c2f.HOOKS), name
        if s.start_key is not None:  # a recipe key that names a transfer rule
            block, key = s.start_key.split(".")
            field = type(getattr(CoarseToFineRecipe(), block)).model_fields[key]
            assert set(typing.get_args(field.annotation)) <= set(transfer.STRATEGIES), name
        assert s.refine in (None, "fit-to-coarse", "distill"), name
    assert BASELINE_ORDER == ("fine-only", "fresh")


def test_variants_expand_lams_and_policies_only_where_the_record_says():
    vs = variants(["fresh", "galerkin-reg", "transfer", "joint"], [0.1, 1.0], ["keep", "rescale"])
    assert [v.label for v in vs] == ["fresh", "galerkin-reg(lam=0.1)", "galerkin-reg(lam=0.1)[rescale]",
                                     "galerkin-reg(lam=1)", "galerkin-reg(lam=1)[rescale]", "transfer",
                                     "transfer[rescale]", "joint"]
    assert Variant("galerkin-reg", 0.1).slug == "galerkin-reg-lam0.1"
    assert Variant("transfer", 0.0, "respectral").slug == "transfer-respectral"
    with pytest.raises(ValueError, match="unknown strategy 'nope'; allowed: fresh"):
        variants(["nope"], [0.1], ["keep"])


def test_joint_no_longer_needs_a_trained_coarse_model():
    """The recipe and the job agree: joint trains a new model (0 coarse epochs are fine for it alone)."""
    rec = validate_recipe({"strategies": ["joint"], "coarse": {"epochs": 0}}, CoarseToFineRecipe)
    assert rec.grid_epochs()[0] == 0
    with pytest.raises(UserError, match="a transfer needs a trained coarse model"):
        validate_recipe({"strategies": ["joint", "mgopt"], "coarse": {"epochs": 0}}, CoarseToFineRecipe)


class Recorder(FitHook):
    def __init__(self, term: float | None = None):
        self.term, self.calls = term, []

    def on_start(self, model, opt):
        self.calls.append(("start", None))

    def extra_loss(self, model, xb, yb, step):
        if self.term is None:
            return None
        return self.term * sum((p * p).sum() for p in model.parameters())

    def after_step(self, model, step):
        self.calls.append(("step", step))

    def after_epoch(self, model, row):
        self.calls.append(("epoch", row["epoch"]))


def _setup():
    data = load_dataset(DatasetConfig(name="synthetic", synthetic={"n_train": 96, "n_test": 32, "size": 8}))
    return data, TrainConfig(epochs=2, batch_size=32, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})


def _model():
    torch.manual_seed(0)
    return build_model("cnn", {"width1": 4, "width2": 8}, 1, 10, 8)


def test_hooks_fire_at_their_moments_and_not_at_start_on_resume(tmp_path):
    data, cfg = _setup()
    hook = Recorder()
    fit(_model(), data, cfg.model_copy(update={"epochs": 1}), ckpt_path=tmp_path / "last.pt", hooks=(hook,),
        progress=False)
    assert hook.calls == [("start", None), ("step", 0), ("step", 1), ("step", 2), ("epoch", 1)]
    resumed = Recorder()
    fit(_model(), data, cfg, resume=torch.load(tmp_path / "last.pt", weights_only=True), hooks=(resumed,),
        progress=False)
    assert resumed.calls == [("step", 3), ("step", 4), ("step", 5), ("epoch", 2)]  # the count continues


def test_an_extra_loss_term_enters_the_objective_and_none_leaves_it_alone():
    data, cfg = _setup()
    plain = fit(_model(), data, cfg, progress=False)
    silent = fit(_model(), data, cfg, hooks=(Recorder(None),), progress=False)
    assert [r["train_loss"] for r in silent] == [r["train_loss"] for r in plain]  # bit for bit
    m_decay, m_plain = _model(), _model()
    fit(m_decay, data, cfg, hooks=(Recorder(0.5),), progress=False)  # a strong L2 term: smaller weights
    fit(m_plain, data, cfg, progress=False)
    norm = lambda m: sum(float((p.detach() ** 2).sum()) for p in m.parameters())  # noqa: E731
    assert norm(m_decay) < 0.9 * norm(m_plain)
