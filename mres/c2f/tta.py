"""Time to accuracy (DESIGN §9): accuracy-vs-seconds curves, Pareto fronts, matched-accuracy ratios.

Seconds are **training** seconds: optimizer steps of every phase plus transfers and BN
recalibration; per-epoch evaluation is monitoring and counts for neither side. A curve is a list
of points ``{"seconds", "test_acc", "resolution"}`` in time order; only points on the finest grid
count as having reached an accuracy (a coarse model is evaluated on coarse test images).

A **front** is the set of (seconds, accuracy) points no other point beats on both: cheaper and at
least as accurate. Between two front points, the time to reach accuracy ``a`` is interpolated
linearly — an assumption (a budget between two measured ones lands on the chord) that is stated
wherever a ratio is printed. Outside a front's accuracy range there is no value (``None``).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

Point = tuple[float, float]  # (seconds, accuracy)


def seconds_to(curve: Sequence[dict[str, Any]], target: float, resolution: int | None = None) -> float | None:
    """Seconds until the curve first reaches ``target`` on grid ``resolution`` (None: never)."""
    for p in curve:
        acc = p.get("test_acc")
        if acc is not None and acc >= target and (resolution is None or p.get("resolution") == resolution):
            return float(p["seconds"])
    return None


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """Points sorted by seconds, each more accurate than every cheaper one."""
    front: list[Point] = []
    for s, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or a > front[-1][1]:
            front.append((float(s), float(a)))
    return front


def time_at(front: Sequence[Point], accuracy: float) -> float | None:
    """Seconds to reach ``accuracy`` along a front, linear between its points; None outside its range."""
    if not front or accuracy > front[-1][1] or accuracy < front[0][1]:
        return None
    for (s0, a0), (s1, a1) in zip(front, front[1:]):
        if a0 <= accuracy <= a1:
            return s0 + (s1 - s0) * (accuracy - a0) / (a1 - a0)
    return front[0][0]  # one point, or the first point's accuracy exactly


def matched_ratios(candidate: Sequence[Point], reference: Sequence[Point]) -> list[dict[str, float]]:
    """For every point of the candidate's front inside the reference front's accuracy range:
    T_candidate / T_reference(a) at the candidate's accuracy a (the reference interpolated)."""
    ref = pareto_front(reference)
    out = []
    for s, a in pareto_front(candidate):
        t = time_at(ref, a)
        if t is not None and t > 0:
            out.append({"accuracy": a, "seconds": s, "reference_seconds": t, "ratio": s / t})
    return out


def headline(candidate: Sequence[Point], reference: Sequence[Point]) -> dict[str, Any]:
    """The ratio T_candidate(a*)/T_reference(a*) at the reference's best accuracy a*; when the candidate
    never gets there, the ratio at the highest accuracy both fronts reach, and by how much it fell short."""
    ref, cand = pareto_front(reference), pareto_front(candidate)
    if not ref or not cand:
        return {"reached": False, "accuracy": None, "ratio": None}
    best = ref[-1][1]
    t_c = time_at(cand, best)
    bound = False
    if t_c is None and best < cand[0][1]:  # even the cheapest candidate point is more accurate: an upper bound
        t_c, bound = cand[0][0], True
    if t_c is not None:
        return {"reached": True, "accuracy": best, "candidate_seconds": t_c, "reference_seconds": ref[-1][0],
                "ratio": t_c / ref[-1][0], "upper_bound": bound}
    common = cand[-1][1]
    t_ref = time_at(ref, common)
    return {"reached": False, "accuracy": best, "candidate_best": common,
            "common_accuracy": common if t_ref is not None else None,
            "ratio": cand[-1][0] / t_ref if t_ref else None,
            "candidate_seconds": cand[-1][0], "reference_seconds": t_ref}
