"""MgNet and the modified ResNets against hand-written loops of the papers' algorithms.

Each reference below is written from the formulas with plain F.conv2d / F.batch_norm, reading the
model's tensors by name; BN statistics and affine parameters are randomised and the models run in
eval mode, so a misplaced BN/ReLU, a wrong shared tensor or a wrong combination of iterates shows.

- MgNet: seed 001 Alg. 3 / seed 002 Alg. 2 with the reference code's BN placements
  (XuTeam/MgNet_Code: MgIte, MgRestriction), plus the multi-step (eq. 6.8) and Chebyshev-semi
  (eq. 6.9) smoothers.
- ResNet-A^ℓ-B^{ℓ,i} and pre-act ResNet-A^ℓ-B^{ℓ,i}: seed 002 eqs 3.3/3.4 and 4.6 (with 3.2).
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mres.models import build_model
from mres.zoo import count_weights

pytestmark = pytest.mark.usefixtures("float64")  # dense comparisons at 1e-10 need double precision


def build(name, opts=None, res=16, in_ch=3, classes=5):
    torch.manual_seed(0)
    m = build_model(name, dict(opts or {}), in_ch, classes, res).double()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.3)
        for n, p in m.named_parameters():
            if "coeffs" in n:  # move the smoothing coefficients off their (plain-like) start
                p.normal_(0.5, 0.5)
    return m.eval()


def bn(sd, key, x):
    return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
                        sd[f"{key}.bias"], training=False, eps=1e-5)


def conv(sd, key, x, stride=1):
    w = sd[f"{key}.weight"]
    groups = x.shape[1] // w.shape[1]
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups)


# --------------------------------------------------------------------------- MgNet


def mgnet_reference(sd, x, nu, b_per_step, pi, smoothing="plain"):
    """Seed 002 Alg. 2 (reference BN placements) with the smoothers of seed 001 eqs 6.7–6.9."""
    f = F.relu(bn(sd, "stem_bn", conv(sd, "stem", x)))
    u = torch.zeros(f.shape[0], sd["levels.0.A.weight"].shape[1], *f.shape[2:])  # u^{1,0} = 0
    for lvl, steps in enumerate(nu):
        p = f"levels.{lvl}"
        A = lambda v: conv(sd, f"{p}.A", v)  # noqa: E731 — one A per level

        def B(k, r):  # σ∘BN∘B∘σ∘BN, k-th application (own BN pair; own conv only with B^{ℓ,i})
            b = f"{p}.B.{k if b_per_step else 0}"
            return F.relu(bn(sd, f"{p}.bn_b.{k}", conv(sd, b, F.relu(bn(sd, f"{p}.bn_r.{k}", r)))))

        if smoothing == "plain":  # u^{ℓ,i} = u^{ℓ,i-1} + B^{ℓ,i}(f − A u^{ℓ,i-1})
            for i in range(steps):
                u = u + B(i, f - A(u))
        elif smoothing == "chebyshev-semi":  # eq. 6.9, u^{ℓ,-1} := u^{ℓ,0}
            hist = [u, u]
            for i in range(1, steps + 1):
                w = sd[f"{p}.coeffs.{i - 1}"]
                hist.append(w * (hist[-1] + B(i - 1, f - A(hist[-1]))) + (1 - w) * hist[-2])
            u = hist[-1]
        else:  # eq. 6.8 with a separate B_j^{ℓ,i} for every pair j < i
            us = [u]
            for i in range(1, steps + 1):
                alpha = torch.softmax(sd[f"{p}.coeffs.{i - 1}"], 0)
                us.append(sum(alpha[j] * (us[j] + B(i * (i - 1) // 2 + j, f - A(us[j]))) for j in range(i)))
            u = us[-1]
        if lvl + 1 < len(nu):  # Π, R 3×3 stride 2; the restriction reuses this level's A
            t = f"transfers.{lvl}"
            r = F.relu(bn(sd, f"{t}.bn_R", conv(sd, f"{t}.R", f - A(u), stride=2)))
            if pi == "pi0":
                u = torch.zeros(r.shape[0], sd[f"levels.{lvl + 1}.A.weight"].shape[1], *r.shape[2:])
                f = r  # A^{ℓ+1}(0) = 0
            else:
                u = F.relu(bn(sd, f"{t}.bn_pi", conv(sd, f"{t}.Pi", u, stride=2)))
                f = r + conv(sd, f"levels.{lvl + 1}.A", u)
    pooled = u.mean(dim=(2, 3))  # global average pool of u
    return F.linear(pooled, sd["head.weight"], sd["head.bias"])


MGNET_CASES = [
    ("mgnet[2,3]-[(4,6),(5,7)]-Bl", {}),
    ("mgnet[2,3]-[(4,6),(5,7)]-Bli", {}),
    ("mgnet[1,2,2]-[4,8,8]-Bli", {"pi": "pi2", "restriction": "channelwise"}),
    ("mgnet[2,2]-[6]-Bl", {"pi": "pi0"}),
    ("mgnet[3,2]-[(4,6),5]-Bli", {"smoothing": "chebyshev-semi"}),
    ("mgnet[3,2]-[(4,6),5]-Bl", {"smoothing": "chebyshev-semi", "pi": "pi0"}),
    ("mgnet[3,2]-[(4,6),5]-Bli", {"smoothing": "multistep"}),
    ("mgnet[3,1]-[6]-Bl", {"smoothing": "multistep", "pi": "pi0"}),
]


@pytest.mark.parametrize("name,opts", MGNET_CASES)
def test_mgnet_forward_is_the_papers_algorithm(name, opts):
    m = build(name, opts)
    spec = m.spec
    sd = dict(m.state_dict())
    x = torch.randn(3, 3, 16, 16)
    expect = mgnet_reference(sd, x, spec.smoothings, spec.b_per_step, opts.get("pi", "pi1"),
                             opts.get("smoothing", "plain"))
    assert torch.allclose(m(x), expect, rtol=1e-9, atol=1e-9)


def test_mgnet_reference_is_sensitive():
    """The check above can fail: a different A^{ℓ+1} in the reference no longer matches."""
    m = build("mgnet[2,2]-[(4,6),5]-Bl")
    sd = dict(m.state_dict())
    x = torch.randn(2, 3, 16, 16)
    sd_bad = dict(sd)
    sd_bad["levels.1.A.weight"] = torch.randn_like(sd["levels.1.A.weight"])  # an A^{ℓ+1} not shared
    assert not torch.allclose(m(x), mgnet_reference(sd_bad, x, (2, 2), False, "pi1"), atol=1e-6)


def test_mgnet_smoother_counts_per_variant():
    def n_b(name, opts):
        return [len(lv.B) for lv in build(name, opts).levels]

    assert n_b("mgnet[3,2]-[4]-Bl", {}) == [1, 1]
    assert n_b("mgnet[3,2]-[4]-Bli", {}) == [3, 2]
    assert n_b("mgnet[3,2]-[4]-Bli", {"smoothing": "chebyshev-semi"}) == [3, 2]
    assert n_b("mgnet[3,2]-[4]-Bli", {"smoothing": "multistep"}) == [6, 3]  # B_j^{ℓ,i}, j < i ≤ ν
    assert n_b("mgnet[3,2]-[4]-Bl", {"smoothing": "multistep"}) == [1, 1]
    ms = build("mgnet[3,2]-[4]-Bl", {"smoothing": "multistep"})
    assert [p.numel() for p in ms.levels[0].coeffs] == [1, 2, 3] and len(ms.levels[0].bn_r) == 6


def test_mgnet_counts_follow_the_paper_tables():
    """Seed 002 Table 5 (CIFAR-100), printed to 0.1M; [64,128,256,512] prints 12.5M, a typo (it is
    ¼ of the [128,…,1024] figure, as for every other doubling)."""
    for name, paper in [("mgnet[2,2,2,2]-[256]-Bl", 8.3), ("mgnet[2,2,2,2]-[512]-Bl", 33.1),
                        ("mgnet[2,2,2,2]-[1024]-Bl", 132.2), ("mgnet[2,2,2,2]-[128,256,512,1024]-Bl", 37.5),
                        ("mgnet[2,2,2,2]-[256,512,1024,2048]-Bl", 150.0)]:
        n = count_weights(build_model(name, {}, 3, 100, 32))
        assert abs(n / 1e6 - paper) <= 0.1, (name, n)


# --------------------------------------------------------------------------- ResNet-A^ℓ-B^{ℓ,i}


def resnet_reference(sd, x, blocks, preact, shared_a):
    """Seed 002 eqs 3.3/3.4 (ResNet) and 3.1/3.2 (pre-act) with BN before every σ; A^{ℓ,i} → A^ℓ
    (eq. 4.6) when ``shared_a``, the transition block's A^{ℓ,0} included."""
    r = conv(sd, "stem", x)
    if not preact:
        r = F.relu(bn(sd, "stem_bn", r))
    for s, n in enumerate(blocks):
        for i in range(n):
            p = f"stages_.{s}.blocks.{i}"
            a = f"stages_.{s}.A.{0 if shared_a else i}"
            stride = 2 if (s > 0 and i == 0) else 1
            proj = f"{p}.shortcut.weight" in sd or f"{p}.shortcut.0.weight" in sd
            if preact:  # r + A σ B σ(r); shortcut R (1×1, stride 2) on the pre-activated r
                pre = F.relu(bn(sd, f"{p}.bn1", r))
                sc = conv(sd, f"{p}.shortcut", pre, stride) if proj else r
                r = sc + conv(sd, a, F.relu(bn(sd, f"{p}.bn2", conv(sd, f"{p}.B", pre, stride))))
            else:  # σ(r + A σ B r)
                out = bn(sd, f"{p}.bn2", conv(sd, a, F.relu(bn(sd, f"{p}.bn1", conv(sd, f"{p}.B", r, stride)))))
                sc = bn(sd, f"{p}.shortcut.1", conv(sd, f"{p}.shortcut.0", r, stride)) if proj else r
                r = F.relu(sc + out)
    return F.linear(r.mean(dim=(2, 3)), sd["head.weight"], sd["head.bias"])


@pytest.mark.parametrize("name", ["resnet[2,3]-[4,8]", "resnet[2,3]-[4,8]-Al-Bli", "preact-resnet[2,3]-[4,8]",
                                  "preact-resnet[3,2,2]-[4,4,8]-Al-Bli"])
def test_resnet_forward_is_the_papers_block(name):
    m = build(name)
    sd = dict(m.state_dict())
    x = torch.randn(3, 3, 16, 16)
    spec = m.spec
    assert torch.allclose(m(x), resnet_reference(sd, x, spec.blocks, spec.preact, spec.shared_a),
                          rtol=1e-9, atol=1e-9)


def test_shared_a_is_one_tensor_per_stage_and_matches_seed_002_counts():
    m = build_model("preact-resnet18-Al-Bli", {}, 3, 10, 32)
    assert [len(st.A) for st in m.stages_] == [1, 1, 1, 1]
    # ResNet-18 minus every A but one per stage (transition A^{ℓ,0} shared too): Table 3's 8.1M / 8.0M
    saved = sum((n - 1) * 9 * c * c for n, c in zip((2, 2, 2, 2), (64, 128, 256, 512)))
    assert count_weights(build_model("resnet18-Al-Bli", {}, 3, 10, 32)) == 11_173_962 - saved == 8_040_522
    r34 = count_weights(build_model("resnet34-Al-Bli", {}, 3, 10, 32))
    assert abs(r34 / 1e6 - 13) < 0.15  # Table 3: 13M
    assert math.isclose(count_weights(build_model("resnet34", {}, 3, 10, 32)) / 1e6, 21.3, abs_tol=0.05)
