"""Paired comparison of two bench points, trial by trial (same seeds and examples per trial).

    python analysis/studies/time_to_accuracy/compare.py runs/tta_warmup/points_4points_3trials.json phase-warm-c4-f2 phase-c4-f2 galerkin
"""

import json
import sys
from pathlib import Path

from mres import stats


def main() -> None:
    points_file, a_name, b_name, strategy = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    points = {(p["name"], p["strategy"]): p for p in json.loads(points_file.read_text())}
    a, b = points[(a_name, strategy)], points[(b_name, strategy)]
    t = stats.paired_test(a["acc_trials"], b["acc_trials"])
    ci = f"[{t['ci'][0] * 100:+.2f}, {t['ci'][1] * 100:+.2f}]" if t["ci"] else "—"
    p = f"p={t['p_t']:.3g}" if t["p_t"] is not None else f"sign p={t['p_sign']}"
    print(f"{strategy}: {a_name} {[round(x * 100, 2) for x in a['acc_trials']]} vs {b_name} "
          f"{[round(x * 100, 2) for x in b['acc_trials']]}: Δ {t['mean_diff'] * 100:+.2f} points {ci}, {p}, "
          f"n={t['n']}: {'significant' if t['significant'] else 'not significant'}; "
          f"collapsed {sum(a['collapsed'])}/{len(a['collapsed'])} vs {sum(b['collapsed'])}/{len(b['collapsed'])}")


if __name__ == "__main__":
    main()
