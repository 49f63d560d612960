"""MgNet and Poly-MgNet move every conv between grids by the strategy (issue 4, DESIGN §3/§4).

Independent check: for each stride-1 3×3 conv of the fine model after a Galerkin transfer, the
dense periodic operators satisfy R·K_fine·P = K_coarse, with R, P the dense 1-D matrices of the
family (Kronecker products) and K built entry by entry from the stencil.
"""

from __future__ import annotations

import pytest
import torch

from mres.grids.operators import prolongation_matrix_1d, restriction_matrix_1d
from mres.models import build_model
from mres.grids.transfer import transfer_weights

pytestmark = pytest.mark.usefixtures("float64")

MODELS = [("mgnet[1,1]-[4]-Bl", {}), ("mgnet[2,1]-[4]-Bli", {"pi": "pi1"}), ("poly-g4", {"widths": [4, 4]}),
          ("poly-g6", {"widths": [4, 4]})]


def dense_conv(stencil: torch.Tensor, n: int) -> torch.Tensor:
    """n²×n² matrix of a 3×3 cross-correlation (torch's conv2d, padding 1) on a periodic n×n grid."""
    k = torch.zeros(n * n, n * n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            for a in range(3):
                for b in range(3):
                    k[i * n + j, ((i + a - 1) % n) * n + (j + b - 1) % n] += stencil[a, b]
    return k


def build(name: str, opts: dict, res: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, {**opts, "coeff_init": "xavier"} if name.startswith("poly") else opts, 1, 3, res).double()


@pytest.mark.parametrize("name,opts", MODELS)
def test_every_conv_is_moved_and_stencils_satisfy_galerkin(name, opts):
    coarse, fine = build(name, opts, 8, 0), build(name, opts, 16, 1)
    diags = {d.name: d for d in transfer_weights(coarse, fine, "galerkin", family="average-bilinear")}
    fine_w = dict(fine.named_parameters())
    coarse_w = dict(coarse.named_parameters())
    convs = [n for n, p in fine_w.items() if p.dim() == 4]
    assert convs, name
    for n in convs:  # every conv (stem, A, B, R, Π) went through a stencil rule, none was skipped or copied
        assert diags[n].kind.startswith("conv3x3"), (n, diags[n].kind)
    r1, p1 = restriction_matrix_1d(16, "average-bilinear"), prolongation_matrix_1d(16, "average-bilinear")
    r2, p2 = torch.kron(r1, r1), torch.kron(p1, p1)
    stride1 = [n for n in convs if diags[n].kind == "conv3x3"]
    assert any(".A" in n for n in stride1), stride1  # the shared A of each level is among them
    for n in stride1:
        wf, wc = fine_w[n].detach(), coarse_w[n].detach()
        for o, i in {(0, 0), (wf.shape[0] - 1, wf.shape[1] - 1)}:  # two channel pairs per conv
            galerkin = r2 @ dense_conv(wf[o, i], 16) @ p2
            assert torch.allclose(galerkin, dense_conv(wc[o, i], 8), atol=1e-10), (n, o, i)


@pytest.mark.parametrize("name,opts", MODELS[:1] + MODELS[2:3])
def test_transfer_copies_every_conv(name, opts):
    coarse, fine = build(name, opts, 8, 0), build(name, opts, 16, 1)
    transfer_weights(coarse, fine, "transfer")
    for (n, pc), (_, pf) in zip(coarse.named_parameters(), fine.named_parameters()):
        if pc.dim() == 4:
            assert torch.equal(pc, pf), n
