"""Loss landscapes: filter normalisation, grid layout, vmap == loop, interpolation, resume, figures, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mres.analysis import landscape as ls
from mres.training.checkpoint import save_checkpoint
from mres.errors import UserError
from mres.models import build_model

RES = 8


def small_cnn(seed: int = 0, res: int = RES) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", {"pool": False, "width1": 4, "width2": 6}, in_channels=1, num_classes=3,
                       resolution=res).eval()


class TinyBN(nn.Module):
    """conv → BN → ReLU → linear, with stages(); BN running stats set to non-trivial values."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * RES * RES, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)
        self.eval()

    def stages(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return [("conv", h)]

    def forward(self, x):
        return self.fc(torch.flatten(self.stages(x)[-1][1], 1))


def subset(n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, RES, RES, generator=g), torch.randint(0, 3, (n,), generator=g)


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-8)))


# ---------------------------------------------------------------------------- directions

@pytest.mark.parametrize("make", [small_cnn, TinyBN])
def test_filter_normalised_per_output_filter_and_zero_on_1d(make):
    model = make(0)
    d = ls.random_direction(model, seed=3)
    params = dict(model.named_parameters())
    assert d.keys() == params.keys()  # no buffers
    for name, p in params.items():
        if p.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0, name
        else:
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1),
                                       rtol=1e-5, atol=1e-7)
            assert not torch.allclose(d[name], p.detach())  # a random direction, not the weights


def test_directions_seeded_and_shared_across_resolutions(tmp_path):
    a, b = ls.random_direction(small_cnn(0), 5), ls.random_direction(small_cnn(0), 5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = ls.random_direction(small_cnn(0), 6)
    assert not torch.equal(a["conv2.weight"], c["conv2.weight"])
    # a model at another resolution shares the conv draws; only the classifier differs in shape
    fine, coarse = small_cnn(0, 8), small_cnn(1, 4)
    dirs = ls.DirectionSet.generate([fine, coarse], 2, seed=5)
    df, dc = dirs.normalized_for(fine), dirs.normalized_for(coarse)
    raw_f = ls.gaussian_draw(dict(fine.named_parameters()), 5, 0)["conv1.weight"]
    raw_c = ls.gaussian_draw(dict(coarse.named_parameters()), 5, 0)["conv1.weight"]
    assert torch.equal(raw_f, raw_c)
    assert df[0]["classifier.weight"].shape != dc[0]["classifier.weight"].shape
    # save / load (weights_only) reproduces the same normalised directions
    path = dirs.save(tmp_path / "directions.pt", [("fine", df)])
    torch.load(path, weights_only=True)
    again = ls.DirectionSet.load(path).normalized_for(fine)
    assert all(torch.equal(again[i][k], df[i][k]) for i in range(2) for k in df[i])
    with pytest.raises(UserError, match="classifier.weight"):
        ls.DirectionSet([{k: v for k, v in r.items() if not k.startswith("classifier.weight")}
                         for r in dirs.raw]).normalized_for(fine)


# ---------------------------------------------------------------------------- surfaces

def test_centre_of_odd_grid_is_the_plain_loss():
    model = small_cnn(0)
    x, y = subset()
    dirs = ls.DirectionSet.generate([model], 2, seed=0)
    jobs = ls.random_slice_jobs([("m", model)], [(x, y)], dirs)
    xs, ys = ls.parse_axis(-1, 1, 5), ls.parse_axis(-1, 1, 7)
    res = ls.compute_landscape(jobs, xs, ys, method="vmap", chunk=4)
    assert res.loss.shape == (1, 5, 7) and xs[2] == 0 and ys[3] == 0
    loss, acc = ls.evaluate_model(model, x, y)
    assert rel_diff(res.loss[0, 2, 3], loss) < 1e-5
    assert res.acc[0, 2, 3] == pytest.approx(acc)
    assert np.ptp(res.loss) > 0


@pytest.mark.parametrize("make", [small_cnn, TinyBN])
def test_vmap_and_loop_give_the_same_surface(make):
    models = [("a", make(0)), ("b", make(1))]
    x, y = subset()
    dirs = ls.DirectionSet.generate([m for _, m in models], 2, seed=2)
    xs, ys = ls.parse_axis(-1, 1, 4), ls.parse_axis(-0.5, 1, 3)
    before = {k: v.clone() for k, v in models[0][1].state_dict().items()}
    fast = ls.compute_landscape(ls.random_slice_jobs(models, [(x, y)] * 2, dirs), xs, ys, method="vmap",
                                chunk=5, batch_size=10)
    slow = ls.compute_landscape(ls.random_slice_jobs(models, [(x, y)] * 2, dirs), xs, ys, method="loop",
                                batch_size=7)
    assert rel_diff(fast.loss, slow.loss) <= 1e-4
    assert np.array_equal(fast.acc, slow.acc)
    # the loop leaves the model as it found it
    assert all(torch.equal(before[k], v) for k, v in models[0][1].state_dict().items())


def test_grid_orientation_loss_ij_is_at_x_i_y_j():
    model = small_cnn(0)
    x, y = subset()
    params = dict(model.named_parameters())
    d1 = ls.random_direction(model, seed=0)
    zero = {k: torch.zeros_like(v) for k, v in d1.items()}
    xs, ys = ls.parse_axis(-1, 1, 5), ls.parse_axis(-2, 2, 7)
    # only direction 1 moves the weights: the loss varies along axis 0 and not along axis 1
    job = ls.SliceJob("m", model, x, y, ls._moving_state(model, False), [d1, zero])
    res = ls.compute_landscape([job], xs, ys)
    assert res.loss.shape == (1, 5, 7)
    assert np.ptp(res.loss[0], axis=1).max() < 1e-6
    assert np.ptp(res.loss[0], axis=0).min() > 1e-3
    # with two real directions, loss[0, i, j] is the loss at θ + x[i]·d1 + y[j]·d2
    d2 = ls.random_direction(model, seed=0, index=1)
    job = ls.SliceJob("m", model, x, y, ls._moving_state(model, False), [d1, d2])
    res = ls.compute_landscape([job], xs, ys)
    i, j = 1, 5
    probe = small_cnn(0)
    with torch.no_grad():
        for k, p in probe.named_parameters():
            p.copy_(params[k] + float(xs[i]) * d1[k] + float(ys[j]) * d2[k])
    assert rel_diff(res.loss[0, i, j], ls.evaluate_model(probe, x, y)[0]) < 1e-5


def test_one_dimensional_slice():
    model = small_cnn(0)
    x, y = subset()
    dirs = ls.DirectionSet.generate([model], 1, seed=0)
    res = ls.compute_landscape(ls.random_slice_jobs([("m", model)], [(x, y)], dirs), ls.parse_axis(-1, 1, 9))
    assert res.loss.shape == (1, 9) and res.dim == 1 and len(res.y) == 0
    assert rel_diff(res.loss[0, 4], ls.evaluate_model(model, x, y)[0]) < 1e-5


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_interpolation_endpoints_are_each_checkpoints_loss(method):
    a, b = TinyBN(0), TinyBN(1)
    x, y = subset()
    job = ls.interpolation_job("a→b", a, b, x, y)
    assert "bn.running_var" in job.base  # BN buffers move too
    ts = ls.parse_axis(-0.5, 1.5, 9)  # -0.5, -0.25, 0, ..., 1, ..., 1.5
    res = ls.compute_landscape([job], ts, method=method, chunk=4)
    assert ts[2] == 0 and ts[6] == 1
    assert rel_diff(res.loss[0, 2], ls.evaluate_model(a, x, y)[0]) < 1e-5
    assert rel_diff(res.loss[0, 6], ls.evaluate_model(b, x, y)[0]) < 1e-5
    assert np.isfinite(res.loss).all()  # extrapolated variances are clamped, not NaN


def test_interpolation_needs_matching_shapes():
    with pytest.raises(UserError, match="between"):
        ls.interpolation_job("x", small_cnn(0, 8), small_cnn(0, 4), *subset())


def test_resume_continues_from_the_partial_file(tmp_path):
    model = small_cnn(0)
    x, y = subset()
    dirs = ls.DirectionSet.generate([model], 2, seed=0)
    xs, ys = ls.parse_axis(-1, 1, 3), ls.parse_axis(-1, 1, 4)
    partial = tmp_path / "p.npz"

    class Stop(Exception):
        pass

    def stop_after_first(n):
        raise Stop

    with pytest.raises(Stop):
        ls.compute_landscape(ls.random_slice_jobs([("m", model)], [(x, y)], dirs), xs, ys, chunk=4,
                             partial_path=partial, resume_key="k", progress=stop_after_first)
    with np.load(partial) as z:
        assert z["done"].sum() == 4
    counted = []
    res = ls.compute_landscape(ls.random_slice_jobs([("m", model)], [(x, y)], dirs), xs, ys, chunk=4,
                               partial_path=partial, resume_key="k", progress=counted.append)
    assert counted[0] == 4 and sum(counted) == 12 and len(counted) == 3  # 4 restored + 2 new chunks
    fresh = ls.compute_landscape(ls.random_slice_jobs([("m", model)], [(x, y)], dirs), xs, ys, chunk=4)
    assert np.allclose(res.loss, fresh.loss, rtol=1e-6)
    # another key: start over
    counted.clear()
    ls.compute_landscape(ls.random_slice_jobs([("m", model)], [(x, y)], dirs), xs, ys, chunk=4,
                         partial_path=partial, resume_key="other", progress=counted.append)
    assert counted == [4, 4, 4]


# ---------------------------------------------------------------------------- figures

def test_figures_non_square_grid_and_surface_not_blank(tmp_path):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(0)
    xs, ys = np.linspace(-1, 1, 5), np.linspace(-2, 2, 7)
    bowl = (xs[:, None] ** 2 + 0.3 * ys[None, :] ** 2)
    loss = np.stack([bowl + 0.5, 2 * bowl + 0.4 + 0.01 * rng.random(bowl.shape)])
    res = ls.LandscapeResult(xs, ys, loss, np.exp(-loss), ["first", "second"], {"mode": "2d"})
    res.save(tmp_path / "l.npz")
    back = ls.LandscapeResult.load(tmp_path / "l.npz")
    assert np.array_equal(back.loss, loss) and back.labels == ["first", "second"]
    paths = ls.plot_landscape(back, tmp_path)
    names = {p.name for p in paths}
    for stem in ("landscape_contour", "landscape_filled", "landscape_surface", "landscape_1d", "landscape_acc_filled"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    img = mpimg.imread(tmp_path / "landscape_surface.png")[..., :3]
    colourful = (img.max(-1) - img.min(-1)) > 0.2  # surface pixels are coloured, axes are grey
    assert colourful.mean() > 0.03
    one_d = ls.LandscapeResult(xs, np.zeros(0), loss[:, :, 0], np.exp(-loss[:, :, 0]), ["a", "b"],
                               {"mode": "between"})
    assert {p.name for p in ls.plot_landscape(one_d, tmp_path / "1d")} == {"landscape_1d.png", "landscape_1d.pdf"}


# ---------------------------------------------------------------------------- CLI

def test_flag_parsing_errors_name_the_flag():
    from mres.analysis.runner import checkpoint_labels, parse_grid, parse_range
    from pathlib import Path

    assert parse_grid("41x31", 2) == (41, 31) and parse_grid("9", 2) == (9, 9) and parse_grid("9", 1) == (9,)
    assert parse_range("-0.5:1.5") == (-0.5, 1.5)
    for bad in ("41by31", "1x5", "", "4x"):
        with pytest.raises(UserError, match="--grid.*NxM"):
            parse_grid(bad, 2)
    with pytest.raises(UserError, match="--grid"):
        parse_grid("5x5", 1)
    for bad in ("1:-1", "a:b", "-1", "0:0"):
        with pytest.raises(UserError, match="--range.*LO:HI"):
            parse_range(bad)
    assert checkpoint_labels([Path("runs/a/checkpoints/last.pt"), Path("runs/b/checkpoints/last.pt")]) == ["a", "b"]


def _save(path, model, res, options):
    save_checkpoint(path, {"model": model.state_dict(),
                           "arch": {"name": "cnn", "options": options, "in_channels": 1, "num_classes": 3},
                           "resolution": res, "epoch": 0, "metrics": [],
                           "recipe": {"dataset": {"name": "synthetic",
                                                  "synthetic": {"size": RES, "classes": 3, "n_train": 40,
                                                                "n_test": 20}}}})


def test_cli_landscape_end_to_end_and_errors(tmp_path, run_cli):
    opts = {"pool": False, "width1": 4, "width2": 6}
    _save(tmp_path / "a.pt", small_cnn(0), RES, opts)
    _save(tmp_path / "b.pt", small_cnn(1), RES, opts)
    _save(tmp_path / "p.pt", build_model("cnn", {"pool": True}, 1, 3, RES), RES, {"pool": True})
    code, out, err = run_cli(tmp_path, "landscape", "a.pt", "b.pt", "--grid", "5x3",
                             "--range", "-1:1", "--samples", "16", "--out", "out", "--device", "cpu", "--chunk", "4",
                             "-q")
    assert code == 0, err + out
    res = ls.LandscapeResult.load(tmp_path / "out" / "landscape.npz")
    assert res.loss.shape == (2, 5, 3) and res.labels == ["a", "b"] and res.settings["grid"] == [5, 3]
    assert (tmp_path / "out" / "landscape_surface.png").exists()
    assert not (tmp_path / "out" / "landscape.partial.npz").exists()
    # the directions file reproduces the directions
    dirs = ls.DirectionSet.load(tmp_path / "out" / "directions.pt")
    assert dirs.digest() == res.settings["directions_digest"]
    code, out, err = run_cli(tmp_path, "landscape", "--between", "a.pt", "b.pt", "--grid", "5",
                             "--samples", "16", "--out", "ab", "-q", "--device", "cpu")
    assert code == 0, err + out
    ab = ls.LandscapeResult.load(tmp_path / "ab" / "landscape.npz")
    assert ab.loss.shape == (1, 5) and list(ab.x) == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert rel_diff(ab.loss[0, 1], res.loss[0, 2, 1]) < 1e-5  # t = 0 is checkpoint a, as is the 2-D centre
    for args, needle in ((("a.pt", "p.pt"), "different architectures"),
                         (("a.pt", "--grid", "5by3"), "--grid"),
                         (("a.pt", "--range", "2:1"), "--range"),
                         (("a.pt", "--dim", "3"), "--dim"),
                         (("a.pt", "b.pt", "--between", "a.pt", "b.pt"), "--between takes two checkpoints")):
        code, out, err = run_cli(tmp_path, "landscape", *args, "--out", "bad")
        assert code == 2 and needle in err, err


def test_auto_log_scale_when_losses_span_orders_of_magnitude():
    from mres.analysis.landscape import wants_log_scale

    assert wants_log_scale(np.array([[0.3, 2.0], [40.0, 250.0]]))
    assert not wants_log_scale(np.array([[0.3, 2.0], [4.0, 25.0]]))
    assert not wants_log_scale(np.array([0.5, np.inf, np.nan, 20.0]))  # non-finite points do not count


def test_flat_panel_gets_its_own_contour_levels():
    from mres.analysis.landscape import panel_levels

    shared = np.linspace(-0.6, 2.9, 30)
    flat = np.linspace(0.364, 0.401, 25).reshape(5, 5)  # between two shared levels: no line would be drawn
    lv, finer = panel_levels(flat, shared)
    assert finer and len(lv) == 8 and lv.min() > 0.364 and lv.max() < 0.401
    steep = np.linspace(-0.5, 2.5, 25).reshape(5, 5)
    lv, finer = panel_levels(steep, shared)
    assert not finer and lv is shared


def test_analysis_inputs_give_user_errors(tmp_path):
    from mres.analysis.runner import LandscapeRequest, run_features
    from mres.errors import UserError

    with pytest.raises(UserError, match="mode"):
        LandscapeRequest(paths=[tmp_path / "a.pt"], out=tmp_path, mode="2D", sizes=(3, 3), xrange=(-1, 1))
    with pytest.raises(UserError, match="size"):
        LandscapeRequest(paths=[tmp_path / "a.pt"], out=tmp_path, mode="1d", sizes=(3, 3), xrange=(-1, 1))
    with pytest.raises(UserError, match="no checkpoints"):
        LandscapeRequest(paths=[], out=tmp_path, mode="2d", sizes=(3, 3), xrange=(-1, 1))
    req = LandscapeRequest(paths=[tmp_path / "a.pt"], out=tmp_path, mode="2d", sizes=(3, 5), xrange=(-1, 1))
    assert req.yrange == (-1, 1)  # a 2-D request without yrange uses xrange
    with pytest.raises(UserError, match="analysis.features.samples"):
        run_features([tmp_path / "a.pt"], tmp_path, [-1], [0], samples_key="analysis.features.samples")


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_channels_last_evaluation_gives_the_same_points(method):
    model = TinyBN(0)
    x, y = subset()
    dirs = ls.DirectionSet.generate([model], 2, seed=3).normalized_for(model)
    base = ls._moving_state(model, include_buffers=False)
    coords = torch.tensor([[0.0, 0.0], [0.5, -0.25], [-1.0, 1.0]])
    plain = ls.SurfaceEvaluator(model, base, dirs, x, y, method=method, batch_size=16).evaluate(coords)
    nhwc = ls.SurfaceEvaluator(model, base, dirs, x, y, method=method, batch_size=16,
                               channels_last=True).evaluate(coords)
    assert rel_diff(plain[0], nhwc[0]) <= 1e-5 and np.array_equal(plain[1], nhwc[1])
    assert np.ptp(plain[0]) > 0  # the points differ: the comparison is not of one number
