"""Statistics over trials (DESIGN §9): means, Student-t intervals and paired tests, from scipy.stats.

Trials of a coarse-to-fine run share the coarse model, the data order and the seeds across
variants, so two variants are compared **paired**, trial by trial: ``scipy.stats.ttest_rel``
(and the Wilcoxon signed-rank test from 6 trials on; when every difference is the same the t-test
is undefined and the exact sign test, p = 2^(1−n), stands in). A difference is called significant
only when every test run says p < ``ALPHA``. Missing values (``None``/NaN: a diverged or skipped
trial) drop out — pairwise, so both sides keep the same trials.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
WILCOXON_MIN_TRIALS = 6


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> dict[str, Any]:
    """n, mean, sample std and the Student-t confidence interval of the mean (None below 2 values)."""
    a = _finite(values)
    out: dict[str, Any] = {"n": int(len(a)), "mean": float(a.mean()) if len(a) else None,
                           "std": float(a.std(ddof=1)) if len(a) > 1 else None, "ci": None}
    if len(a) > 1:
        sem = stats.sem(a)
        lo, hi = stats.t.interval(confidence, len(a) - 1, loc=a.mean(), scale=sem) if sem > 0 else (a.mean(),) * 2
        out["ci"] = [float(lo), float(hi)]
    return out


def paired_test(a: Sequence[float | None], b: Sequence[float | None], confidence: float = 0.95) -> dict[str, Any]:
    """Paired comparison of ``a`` against ``b`` (same trials): mean difference a − b, its t interval,
    the paired t-test's p, the Wilcoxon signed-rank p (from 6 pairs on) and whether it is significant."""
    pairs = [(x, y) for x, y in zip(a, b)
             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    n = len(pairs)
    out: dict[str, Any] = {"n": n, "mean_diff": None, "ci": None, "p_t": None, "p_sign": None,
                           "p_wilcoxon": None, "significant": False}
    if n == 0:
        return out
    x, y = (np.asarray(v, dtype=float) for v in zip(*pairs))
    d = x - y
    out["mean_diff"] = float(d.mean())
    if n < 2:
        return out
    if np.all(d == d[0]):  # no spread: t is 0/0 or ±inf, so the exact two-sided sign test decides
        out["ci"] = [float(d[0]), float(d[0])]
        out["p_sign"] = 1.0 if d[0] == 0 else min(1.0, 2.0 ** (1 - n))  # all n differences of one sign
    else:
        res = stats.ttest_rel(x, y)
        ci = res.confidence_interval(confidence)
        out["p_t"], out["ci"] = float(res.pvalue), [float(ci.low), float(ci.high)]
    if n >= WILCOXON_MIN_TRIALS:
        out["p_wilcoxon"] = 1.0 if np.all(d == 0) else float(stats.wilcoxon(x, y).pvalue)
    ps = [p for p in (out["p_t"], out["p_sign"], out["p_wilcoxon"]) if p is not None]
    out["significant"] = bool(ps) and all(p < ALPHA for p in ps) and out["mean_diff"] != 0
    return out


def significance_mark(test: dict[str, Any] | None) -> str:
    """'*' for a significant paired difference (p < 0.05 in every test run), '' otherwise."""
    return "*" if test and test.get("significant") else ""
