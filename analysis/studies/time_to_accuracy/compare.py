"""Paired comparison of two bench points, trial by trial (same seeds and examples per trial).

    python analysis/studies/time_to_accuracy/compare.py runs/tta_warmup/points_4points_3trials.json phase-warm-c4-f2 phase-c4-f2 galerkin
    python analysis/studies/time_to_accuracy/compare.py POINTS.json mgopt-c8-f2-e20:mgopt run-c8-f2:transfer

A point given as NAME:STRATEGY names its own strategy (points of different strategies); otherwise the
fourth argument is both points' strategy. Seconds are compared too (mean over trials, ratio A/B).
"""

import json
import sys
from pathlib import Path

from mres.c2f import stats


def main() -> None:
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    points_file, a_name, b_name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    points = {(p["name"], p["strategy"]): p for p in json.loads(points_file.read_text())}

    def find(name: str) -> tuple[str, dict]:
        point, _, strategy = name.partition(":")
        strategy = strategy or (sys.argv[4] if len(sys.argv) == 5 else "")
        if (point, strategy) not in points:
            sys.exit(f"{points_file}: no point {point!r} with strategy {strategy!r}; it has "
                     + ", ".join(f"{n}:{s}" for n, s in points))
        return point, points[(point, strategy)]

    (a_name, a), (b_name, b) = find(a_name), find(b_name)
    strategy = a["strategy"] if a["strategy"] == b["strategy"] else f"{a['strategy']} vs {b['strategy']}"
    t = stats.paired_test(a["acc_trials"], b["acc_trials"])
    ci = f"[{t['ci'][0] * 100:+.2f}, {t['ci'][1] * 100:+.2f}]" if t["ci"] else "—"
    p = f"p={t['p_t']:.3g}" if t["p_t"] is not None else f"sign p={t['p_sign']}"
    print(f"{strategy}: {a_name} {[round(x * 100, 2) for x in a['acc_trials']]} vs {b_name} "
          f"{[round(x * 100, 2) for x in b['acc_trials']]}: Δ {t['mean_diff'] * 100:+.2f} points {ci}, {p}, "
          f"n={t['n']}: {'significant' if t['significant'] else 'not significant'}; "
          f"collapsed {sum(a['collapsed'])}/{len(a['collapsed'])} vs {sum(b['collapsed'])}/{len(b['collapsed'])}; "
          f"seconds {a['seconds']:.1f} vs {b['seconds']:.1f} (ratio {a['seconds'] / b['seconds']:.2f})")


if __name__ == "__main__":
    main()
