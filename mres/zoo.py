"""Weight counts of the model zoo against the figures of the papers and reference codes.

Weights = every learnable tensor counted once (shared convs once), BN weight and bias included,
BN running statistics excluded — the convention of both reference codes.  Counts do not depend
on the input resolution (global-average-pool heads), so models are built at 32×32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from .errors import UserError

# dataset → (input channels, classes)
DATASETS: dict[str, tuple[int, int]] = {
    "cifar10": (3, 10),
    "cifar100": (3, 100),
    "fashion-mnist": (1, 10),
    "mnist": (1, 10),
}


@dataclass(frozen=True)
class ZooEntry:
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    # exact figure on CIFAR-10 (reference code), moved to other datasets through stem and head
    reference: int | None = None
    # a rounded figure as printed in a paper, for the dataset it was reported on
    paper: float | None = None
    paper_dataset: str = "cifar10"
    source: str = ""
    note: str = ""  # why ours differs from the reference figure
    stem_width: int = 0  # output channels of the 3×3 stem conv (input-channel dependence)
    head_width: int = 0  # input features of the linear head (class dependence)


_UNUSED_R_PI = "−1,152: the reference builds level 1's R and Π (2 × 64·1·3·3) and never uses them"

ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("mgnet[2,2,2,2]-[256]-Bl", reference=8_278_794, source="XuTeam/MgNet_Code",
             stem_width=256, head_width=256),
    ZooEntry("mgnet[2,2,2,2]-[256]-Bli", reference=10_638_090, source="XuTeam/MgNet_Code --wise-B",
             stem_width=256, head_width=256),
    ZooEntry("mgnet[2,2,2,2]-[64,128,256,256]-Bl", {"pi": "pi2", "restriction": "channelwise"}, paper=2.7e6,
             source="seed 000 §4 MgNet^{A,B}, as printed",
             note="seed 000 gives no layer inventory for its MgNet baseline; not reconciled"),
    ZooEntry("poly-q2", reference=1_386_706, source="vanbetteray/Poly-MgNet", note=_UNUSED_R_PI,
             stem_width=64, head_width=256),
    ZooEntry("poly-g4", reference=1_386_706, source="vanbetteray/Poly-MgNet", note=_UNUSED_R_PI,
             stem_width=64, head_width=256),
    ZooEntry("poly-g6", reference=1_389_526, source="vanbetteray/Poly-MgNet",
             note=_UNUSED_R_PI + "; +4: one complex-pair step per level learns (c1, c2), the reference's one value",
             stem_width=64, head_width=256),
    ZooEntry("poly-g8", reference=1_392_346, source="vanbetteray/Poly-MgNet",
             note=_UNUSED_R_PI + "; +8: two complex-pair steps per level (the paper's ĝĝ + 2 pairs; the reference "
                  "code builds ĝĝĝ + 1 pair) with 2 coefficients each where the reference's pair has 1",
             stem_width=64, head_width=256),
    ZooEntry("vmgnet[2,2,2,2]-[1,1,1]-[256]-Bl", source="seed 001 Alg. 4 (no count published)",
             note="MgNet[2,2,2,2]-[256]-Bl's 8,278,794 + three 4×4 transposed convs P (3 × 256·256·16) + one B' "
                  "(256·256·9) and one BN pair (2 × 2 × 256) per post-smoothing step on levels 1–3, head on u^1"),
    ZooEntry("resnet18", reference=11_173_962, source="CIFAR ResNet-18 (papers: 11.2M)",
             stem_width=64, head_width=512),
    ZooEntry("resnet18-Al-Bli", paper=8.1e6, source="seed 002 Table 3",
             note="seed 002 prints 8.0M and 8.1M for this model in different places; one A^ℓ per stage shared "
                  "by every block, as its counts require"),
    ZooEntry("preact-resnet18-Al-Bli", paper=8.1e6, source="seed 002 Table 3",
             note="seed 002 gives one rounded figure for both block orders (see resnet18-Al-Bli)"),
    ZooEntry("resnet34", paper=21.3e6, source="seed 001 Table 2", note="within the printed rounding"),
)


def count_weights(model: nn.Module) -> int:
    """Learnable weights, each tensor once (``parameters()`` skips repeats of shared tensors)."""
    return sum(p.numel() for p in model.parameters())


def reference_count(entry: ZooEntry, dataset: str) -> tuple[float | None, str]:
    """The entry's reference figure on a dataset and how it is known ('exact', 'rounded' or '')."""
    in_ch, classes = DATASETS[dataset]
    if entry.reference is not None:
        ref = entry.reference + (in_ch - 3) * 9 * entry.stem_width + (classes - 10) * (entry.head_width + 1)
        return ref, "exact"
    if entry.paper is not None and dataset == entry.paper_dataset:
        return entry.paper, "rounded"
    return None, ""


def param_table(dataset: str) -> list[dict[str, Any]]:
    """One row per zoo model: our weight count, the reference figure and the difference in %."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    from .models import build_model

    in_ch, classes = DATASETS[dataset]
    rows = []
    for entry in ZOO:
        opts = dict(entry.options)
        if entry.model.startswith("poly"):
            opts.setdefault("coeff_init", "xavier")  # the count does not depend on it; spectral init costs seconds
        ours = count_weights(build_model(entry.model, opts, in_ch, classes, 32))
        ref, kind = reference_count(entry, dataset)
        rows.append({
            "model": entry.model,
            "options": dict(entry.options),
            "ours": ours,
            "reference": ref,
            "reference_kind": kind,
            "diff_pct": None if ref is None else 100.0 * (ours - ref) / ref,
            "source": entry.source,
            "note": entry.note,
        })
    return rows
