"""Time to accuracy (DESIGN §9): schedules across grids, the budget-matched baseline, collapse
detection, paired statistics and Pareto fronts — each checked against an independent construction."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch.optim.optimizer import register_optimizer_step_pre_hook

from mres.c2f import stats, tta
from mres.c2f.job import budget_matched_epochs, lr_plans, plan_phases, run_coarse_to_fine
from mres.training.data import load_dataset
from mres.models import build_model
from mres.recipe import CoarseToFineRecipe, DatasetConfig, TrainConfig, validate_recipe
from mres.training.fit import fit, set_momentum

N_TRAIN = 256


def recipe(**kw):
    raw = {"dataset": {"name": "synthetic", "synthetic": {"n_train": N_TRAIN, "n_test": 64, "size": 16}},
           "model": {"name": "cnn", "width1": 4, "width2": 8}, "resolutions": [8, 16],
           "coarse": {"epochs": 2, "batch_size": 32}, "fine": {"epochs": 1, "batch_size": 32},
           "strategies": ["transfer"], "trials": 1, "eval_train": False}
    raw.update(kw)
    return validate_recipe(raw, CoarseToFineRecipe)


@pytest.fixture
def lr_trace():
    """Every optimizer step's learning rate, in order (torch's global step hook)."""
    seen: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    yield seen
    handle.remove()


@pytest.mark.parametrize("warmup", [0.0, 0.5])
def test_run_scope_gives_the_lrs_of_one_fit_over_the_concatenated_steps(tmp_path, lr_trace, warmup):
    sched = {"name": "cosine", "warmup_epochs": warmup}
    run_coarse_to_fine(recipe(schedule_scope="run", coarse={"epochs": 2, "batch_size": 32, "schedule": sched},
                              fine={"epochs": 1, "batch_size": 32, "schedule": {"name": "cosine"}}),
                       tmp_path / "run", progress=False)
    c2f_lrs = list(lr_trace)
    lr_trace.clear()
    data = load_dataset(DatasetConfig(name="synthetic", synthetic={"n_train": N_TRAIN, "n_test": 64, "size": 16}))
    model = build_model("cnn", {"width1": 4, "width2": 8}, 1, 10, 16)
    fit(model, data, TrainConfig(epochs=3, batch_size=32, schedule=sched), progress=False)
    steps_per_epoch = math.ceil(N_TRAIN / 32)
    assert len(c2f_lrs) == len(lr_trace) == 3 * steps_per_epoch
    assert c2f_lrs == pytest.approx(lr_trace, rel=1e-12, abs=1e-15)
    if warmup == 0.0:  # and both equal torch's own cosine annealing over the whole run
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3 * steps_per_epoch)
        ref = []
        for _ in range(3 * steps_per_epoch):
            ref.append(opt.param_groups[0]["lr"])
            opt.step()
            cos.step()
        assert c2f_lrs == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_phase_scope_restarts_the_schedule_at_each_grid(tmp_path, lr_trace):
    run_coarse_to_fine(recipe(schedule_scope="phase"), tmp_path / "run", progress=False)
    spe = math.ceil(N_TRAIN / 32)
    assert lr_trace[2 * spe] == pytest.approx(0.05)  # the fine phase starts again at the peak
    assert lr_trace[2 * spe - 1] < 0.01


def test_run_scope_warmup_after_transfer_and_per_phase_peak_lr(tmp_path, lr_trace):
    rec = recipe(schedule_scope="run", coarse={"epochs": 2, "batch_size": 32},
                 fine={"epochs": 2, "batch_size": 32, "optimizer": {"lr": 0.02},
                       "schedule": {"name": "cosine", "warmup_epochs": 1}})
    run_coarse_to_fine(rec, tmp_path, progress=False)
    spe = math.ceil(N_TRAIN / 32)
    total = 4 * spe
    expect = [0.05 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(2 * spe)]
    for s in range(2 * spe):  # the fine phase continues the coarse one's cosine at its own peak, ramped
        plan = 0.5 * (1 + math.cos(math.pi * (2 * spe + s) / total))
        expect.append(0.02 * plan * min(1.0, (s + 1) / spe))
    assert lr_trace == pytest.approx(expect, rel=1e-12, abs=1e-15)
    coarse_plan, fine_plan = lr_plans(plan_phases(rec, N_TRAIN), "run")
    assert (coarse_plan.offset, fine_plan.offset, fine_plan.total) == (0, 2 * spe, total)


def test_epochs_per_grid_and_coarse_batch_scaling_plan_the_phases():
    rec = recipe(resolutions=[4, 8, 16], epochs_per_grid=[3, 2, 1], coarse_batch_scaling=True)
    phases = plan_phases(rec, N_TRAIN)
    assert [p.cfg.epochs for p in phases] == [3, 2, 1]
    # ×16 at grid 4 would be 512 > the 256 examples: the batch is capped, and the lr follows the real batch
    assert [p.cfg.batch_size for p in phases] == [256, 32 * 4, 32]
    assert [p.cfg.optimizer.lr for p in phases] == pytest.approx([0.05 * 8, 0.05 * 4, 0.05])
    # pixel work of the cascade in fine-grid epochs on N examples: 3/16 + 2/4 + 1 = 1.6875 -> 2
    assert budget_matched_epochs(phases, N_TRAIN) == 2


def test_fine_only_is_budget_matched_and_trains_on_the_coarse_examples(tmp_path):
    rec = recipe(strategies=["fresh", "fine-only", "transfer"], coarse_subset=160, fine_subset=64,
                 coarse={"epochs": 4, "batch_size": 32}, fine={"epochs": 2, "batch_size": 32})
    summary = run_coarse_to_fine(rec, tmp_path, progress=False)
    # 4 coarse epochs × 160 × 1/4 + 2 fine epochs × 64 = 288 fine-example passes = 1.8 epochs of 160 -> 2
    assert summary["fine_only_epochs"] == 2 and summary["baseline"] == "fine-only"
    res = json.loads((tmp_path / "trial0" / "fine-only" / "fine-16" / "result.json").read_text())
    assert len(res["metrics"]) == 2
    assert "lr_plan" not in res  # its own schedule, not a slice of the variants' plan
    curve = summary["strategies"]["fine-only"]["curve"][0]
    assert all(p["resolution"] == 16 for p in curve)
    tr = summary["strategies"]["transfer"]["curve"][0]
    assert [p["resolution"] for p in tr] == [8] * 4 + [16] * 3  # coarse epochs, the start, fine epochs
    assert all(b["seconds"] >= a["seconds"] for a, b in zip(tr, tr[1:]))
    md = (tmp_path / "report.md").read_text()
    assert "budget-matched" in md and "thesis's baseline" in md
    assert (tmp_path / "figures" / "accuracy_seconds.png").stat().st_size > 10_000


def test_a_run_built_to_collapse_is_flagged_not_diverged(tmp_path):
    # weight decay 0.9 at lr 1 shrinks every weight by 10x per step: the transferred solution is
    # erased within the fine phase, the losses stay finite, the network falls to the class prior
    collapse = {"epochs": 2, "batch_size": 32, "optimizer": {"lr": 1.0, "momentum": 0.0, "weight_decay": 0.9},
                "schedule": "constant"}
    summary = run_coarse_to_fine(recipe(coarse={"epochs": 4, "batch_size": 32}, fine=collapse,
                                        strategies=["transfer", "galerkin-reg"]), tmp_path, progress=False)
    t = summary["strategies"]["transfer"]
    assert t["acc_at_transfer"][0] > 0.5 and t["acc_final"][0] <= summary["chance"] + 0.05
    assert t["collapsed"] == [True] and t["diverged"] == [False]
    assert "**transfer collapsed**" in (tmp_path / "report.md").read_text()
    # the same run with a sane fine phase is not flagged
    ok = run_coarse_to_fine(recipe(coarse={"epochs": 4, "batch_size": 32}), tmp_path / "ok", progress=False)
    assert ok["strategies"]["transfer"]["collapsed"] == [False]


def test_summary_has_statistics_and_strict_json(tmp_path):
    summary = run_coarse_to_fine(recipe(trials=3, strategies=["fine-only", "transfer", "galerkin"]), tmp_path,
                                 progress=False)

    def no_nan(token):
        raise AssertionError(f"summary.json holds {token}, which is not JSON")

    on_disk = json.loads((tmp_path / "summary.json").read_text(), parse_constant=no_nan)
    st = on_disk["statistics"]["galerkin"]
    assert st["acc_final"]["n"] == 3 and len(st["acc_final"]["ci"]) == 2
    assert set(st["vs"]) == {"transfer", "fine-only"}
    acc_g = on_disk["strategies"]["galerkin"]["acc_final"]
    acc_t = on_disk["strategies"]["transfer"]["acc_final"]
    assert st["vs"]["transfer"]["mean_diff"] == pytest.approx(np.mean(np.subtract(acc_g, acc_t)))
    tt = on_disk["time_to_accuracy"]
    assert tt["baseline"] == "fine-only" and len(tt["levels"]) == 3
    assert tt["levels"][0] == pytest.approx(np.mean(on_disk["strategies"]["fine-only"]["acc_final"]))
    md = (tmp_path / "report.md").read_text()
    assert "95 % CI" in md and "Δ vs transfer" in md and "Seconds to reach accuracy" in md


# ----------------------------------------------------------------------------- pure functions
def test_paired_test_against_the_t_formula_and_an_exact_sign_enumeration():
    a = [0.91, 0.88, 0.90, 0.93, 0.87, 0.92, 0.89]
    b = [0.89, 0.88, 0.86, 0.90, 0.86, 0.88, 0.88]
    res = stats.paired_test(a, b)
    d = np.subtract(a, b)
    n = len(d)
    se = d.std(ddof=1) / math.sqrt(n)
    t = d.mean() / se
    assert res["mean_diff"] == pytest.approx(d.mean())
    assert res["p_t"] == pytest.approx(2 * sps.t.sf(abs(t), n - 1))
    half = sps.t.ppf(0.975, n - 1) * se
    assert res["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    # Wilcoxon (n >= 6): exact two-sided p by enumerating every sign assignment of the ranks
    nz = d[d != 0]
    ranks = sps.rankdata(np.abs(nz))
    w_obs = ranks[nz > 0].sum()
    ws = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(nz))]
    centre = ranks.sum() / 2
    p_exact = np.mean([abs(w - centre) >= abs(w_obs - centre) - 1e-12 for w in ws])
    assert res["p_wilcoxon"] == pytest.approx(p_exact, rel=0.05)
    assert res["significant"] is bool(res["p_t"] < 0.05 and res["p_wilcoxon"] < 0.05)
    assert stats.paired_test(a[:5], b[:5])["p_wilcoxon"] is None  # below 6 trials: t-test only


def test_paired_test_drops_missing_trials_pairwise_and_handles_no_spread():
    res = stats.paired_test([0.9, None, 0.8, float("nan")], [0.7, 0.6, 0.6, 0.5])
    assert res["n"] == 2 and res["mean_diff"] == pytest.approx(0.2) and res["ci"] == pytest.approx([0.2, 0.2])
    # equal differences: no t-test; the exact sign test of 2 pairs of one sign gives p = 2 · 2^-2 = 0.5
    assert res["p_t"] is None and res["p_sign"] == pytest.approx(0.5) and res["significant"] is False
    five = stats.paired_test([0.9] * 5, [0.8] * 5)
    assert five["p_sign"] == pytest.approx(sps.binomtest(5, 5).pvalue) and five["significant"] is False
    seven = stats.paired_test([0.9] * 7, [0.8] * 7)
    assert seven["p_sign"] == pytest.approx(sps.binomtest(7, 7).pvalue) and seven["significant"] is True
    assert stats.paired_test([0.5, 0.5], [0.5, 0.5])["significant"] is False
    ci = stats.mean_ci([0.8, 0.9, 1.0])
    assert ci["ci"] == pytest.approx(list(sps.t.interval(0.95, 2, loc=0.9, scale=sps.sem([0.8, 0.9, 1.0]))))
    assert stats.mean_ci([0.8])["ci"] is None


def test_pareto_front_interpolation_and_headline():
    fine = [(100, 0.85), (200, 0.88), (300, 0.87), (400, 0.90), (150, 0.80)]
    assert tta.pareto_front(fine) == [(100, 0.85), (200, 0.88), (400, 0.90)]
    front = tta.pareto_front(fine)
    assert tta.time_at(front, 0.89) == pytest.approx(300)
    assert tta.time_at(front, 0.91) is None and tta.time_at(front, 0.84) is None
    c2f = [(60, 0.86), (120, 0.895), (180, 0.905)]
    h = tta.headline(c2f, fine)
    # a* = 0.90: between (120, 0.895) and (180, 0.905) -> 150 s; fine-only needs 400 s
    assert h["reached"] and h["candidate_seconds"] == pytest.approx(150) and h["ratio"] == pytest.approx(150 / 400)
    short = tta.headline([(60, 0.86), (120, 0.89)], fine)
    assert not short["reached"] and short["candidate_best"] == 0.89
    assert short["ratio"] == pytest.approx(120 / tta.time_at(front, 0.89))
    m = tta.matched_ratios(c2f, fine)
    # 0.905 lies above the fine-only front: no matched ratio there
    assert [x["accuracy"] for x in m] == [0.86, 0.895]
    assert [x["ratio"] for x in m] == pytest.approx([60 / (100 + 100 * 0.01 / 0.03), 120 / (200 + 200 * 0.015 / 0.02)])


def test_momentum_starts_sgd_where_the_formula_says():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    bufs = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    set_momentum(model, opt, bufs)
    x = torch.randn(4, 3)
    model(x).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        assert torch.allclose(p, before[n] - 0.1 * (0.9 * bufs[n] + grads[n]), atol=1e-6)


def test_carried_momentum_moves_like_the_weights(float64):
    from mres.grids.operators import restrict_stencils
    from mres.grids.transfer import transfer_like_weights

    torch.manual_seed(0)
    coarse = build_model("cnn", {"width1": 3, "width2": 4}, 1, 10, 8)
    fine = build_model("cnn", {"width1": 3, "width2": 4}, 1, 10, 16)
    bufs = {n: torch.randn_like(p) for n, p in coarse.named_parameters()}
    moved = transfer_like_weights(coarse, fine, bufs, "galerkin")
    # exact Galerkin: restricting the moved stencils gives the coarse ones back (R K_h P = K_2h)
    for name in ("conv1.weight", "conv2.weight"):
        assert torch.allclose(restrict_stencils(moved[name], "average-bilinear"), bufs[name], atol=1e-10)
    assert moved["classifier.weight"].shape == fine.classifier.weight.shape
    copied = transfer_like_weights(coarse, fine, bufs, "transfer")
    assert torch.equal(copied["conv2.weight"], bufs["conv2.weight"])


def test_schedule_keys_are_checked(tmp_path):
    from mres.errors import UserError

    with pytest.raises(UserError, match="fine.schedule.name.*schedule_scope 'run'"):
        recipe(schedule_scope="run", fine={"schedule": "constant"})
    with pytest.raises(UserError, match="epochs_per_grid.*need 2"):
        recipe(epochs_per_grid=[1, 2, 3])
    with pytest.raises(UserError, match="carry_optimizer moves SGD momentum"):
        recipe(carry_optimizer=True, fine={"optimizer": {"name": "adam"}})
    with pytest.raises(UserError, match="schedule_scope"):
        recipe(schedule_scope="everything")


@pytest.mark.parametrize("strategy, rule", [("galerkin", "galerkin"), ("mgopt", "transfer")])
def test_carried_momentum_is_where_the_fine_optimizer_starts(tmp_path, strategy, rule):
    """The buffers move by the weights' rule: mgopt starts as the copy (its record's start)."""
    from mres.training.checkpoint import load_checkpoint
    from mres.training.fit import momentum_buffers
    from mres.grids.transfer import transfer_like_weights

    first_state: dict[int, dict[tuple, torch.Tensor]] = {}

    def record(opt, args, kwargs):  # the buffers each optimizer holds at its first step
        if id(opt) not in first_state:
            first_state[id(opt)] = {tuple(p.shape): opt.state[p]["momentum_buffer"].clone()
                                    for p in opt.param_groups[0]["params"] if "momentum_buffer" in opt.state[p]}

    handle = register_optimizer_step_pre_hook(record)
    try:
        run_coarse_to_fine(recipe(carry_optimizer=True, strategies=[strategy], multilevel={"every": 4, "tau_batch": 32}),
                           tmp_path, progress=False)
    finally:
        handle.remove()
    coarse_opt, fine_opt = first_state.values()
    assert coarse_opt == {}  # the coarse phase starts from rest
    coarse = build_model("cnn", {"width1": 4, "width2": 8}, 1, 10, 8)
    fine = build_model("cnn", {"width1": 4, "width2": 8}, 1, 10, 16)
    coarse.load_state_dict(load_checkpoint(tmp_path / "trial0" / "coarse-8")["model"])
    bufs = momentum_buffers(coarse, load_checkpoint(tmp_path / "trial0" / "coarse-8")["optimizer"])
    expect = transfer_like_weights(coarse, fine, bufs, rule)
    for name, p in fine.named_parameters():
        assert torch.allclose(fine_opt[tuple(p.shape)], expect[name], atol=1e-6), name
    assert fine_opt[tuple(fine.classifier.weight.shape)].abs().sum() > 0


def test_fine_only_takes_the_coarse_schedule_even_when_written_as_a_name():
    rec = recipe(coarse={"epochs": 2, "batch_size": 32, "schedule": "constant"},
                 fine={"epochs": 1, "batch_size": 32}, fine_only={"schedule": {"warmup_epochs": 1}})
    assert rec.fine_only.schedule.name == "constant" and rec.fine_only.schedule.warmup_epochs == 1
    from mres.errors import UserError

    with pytest.raises(UserError) as exc:  # a bad coarse key is reported once, under its own name
        recipe(coarse={"epochs": 2, "batch_sise": 32})
    assert "coarse.batch_sise" in str(exc.value) and "fine_only" not in str(exc.value)


def test_epochs_at_the_coarsest_and_finest_grid_are_required():
    from mres.errors import UserError

    with pytest.raises(UserError, match="fine.epochs: 0 epochs at the finest grid"):
        recipe(fine={"epochs": 0})
    with pytest.raises(UserError, match="coarse.epochs: 0 epochs at the coarsest grid"):
        recipe(coarse={"epochs": 0})
    with pytest.raises(UserError, match="epochs_per_grid: 0 epochs at the finest grid"):
        recipe(epochs_per_grid=[2, 0])
    assert recipe(coarse={"epochs": 0}, strategies=["fresh"]).coarse.epochs == 0  # no transfer: no coarse model


def test_resume_refuses_a_finished_phase_trained_otherwise(tmp_path):
    from mres.errors import UserError

    run_coarse_to_fine(recipe(), tmp_path, progress=False)
    with pytest.raises(UserError, match=r"coarse-8 was trained with train.epochs 2 \(the recipe now: 3\)"):
        run_coarse_to_fine(recipe(coarse={"epochs": 3, "batch_size": 32}), tmp_path, progress=False)
    again = run_coarse_to_fine(recipe(trials=2), tmp_path, progress=False)  # more trials: reuses trial 0
    assert again["trials"] == 2


def test_a_transfer_that_starts_above_the_reference_reaches_it_at_the_transfers_seconds(tmp_path):
    slow = {"epochs": 1, "batch_size": 32, "optimizer": {"lr": 0.005}, "schedule": "constant"}  # fresh: below the start
    s = run_coarse_to_fine(recipe(strategies=["fresh", "transfer"], coarse={"epochs": 3, "batch_size": 32},
                                  fine=slow), tmp_path, progress=False)
    assert s["baseline"] == "fresh"
    target = s["time_to_accuracy"]["levels"][0]
    assert s["strategies"]["transfer"]["acc_at_transfer"][0] > target  # the start is above the reference
    coarse = json.loads((tmp_path / "trial0" / "coarse-8" / "result.json").read_text())
    phase = json.loads((tmp_path / "trial0" / "transfer" / "fine-16" / "result.json").read_text())
    start_seconds = sum(m["train_seconds"] for m in coarse["metrics"]) + s["strategies"]["transfer"]["transfer_seconds"][0]
    reached = s["time_to_accuracy"]["variants"]["transfer"][0]["seconds"][0]
    assert reached == pytest.approx(start_seconds, rel=1e-9)
    assert reached < start_seconds + phase["metrics"][0]["train_seconds"]  # before the first fine epoch ended
