"""Compare two pipeline runs' summaries (e.g. a fresh `make run` against the previous main's):

    python tests/compare_summaries.py OLD_RESULTS NEW_RESULTS [--exclude-norm-type T ...]

Runs are matched on their identity columns; for each study it prints how many runs match,
how many agree exactly, how many within the documented pack tolerance (normbench.train.
PACK_TOLERANCE), and the largest differences.  Exit status 1 if a matched run differs in
its diverged flag or steps, or beyond ``--rtol``/``--atol`` in a final metric.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ID = ["study", "model", "dataset", "norm", "placement", "activation", "batch_size", "lr", "seed"]
VALUES = ["final_test_acc", "final_test_loss", "final_train_loss", "best_test_acc"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--exclude-norm-type", action="append", default=[], help="leave out runs of a norm type a fix changed")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-5)
    a = p.parse_args(argv)
    bad = 0
    for f in sorted(a.old.glob("*/summary.parquet")):
        g = a.new / f.parent.name / "summary.parquet"
        if not g.exists():
            print(f"{f.parent.name}: not in {a.new}")
            continue
        old, new = pd.read_parquet(f), pd.read_parquet(g)
        if "norm_type" in new:
            new = new[~new.norm_type.isin(a.exclude_norm_type)]
        m = old.merge(new, on=ID, suffixes=("_old", "_new"))
        if m.empty:
            print(f"{f.parent.name}: no run in common")
            continue
        same_flags = (m.diverged_old == m.diverged_new) & (m.steps_old == m.steps_new)
        close = same_flags.copy()
        exact = same_flags.copy()
        worst = {}
        for v in VALUES:
            o, n = m[f"{v}_old"].to_numpy(float), m[f"{v}_new"].to_numpy(float)
            both_nan = np.isnan(o) & np.isnan(n)
            close &= both_nan | np.isclose(n, o, rtol=a.rtol, atol=a.atol)
            exact &= both_nan | (o == n)
            d = np.where(both_nan, 0, np.abs(n - o))
            worst[v] = float(np.nanmax(d)) if len(d) else 0.0
        bad += int((~close).sum())
        print(f"{f.parent.name}: {len(m)} runs matched ({len(old)} old, {len(new)} new); {int(exact.sum())} identical, "
              f"{int(close.sum())} within rtol {a.rtol:g}/atol {a.atol:g}; flags differ in {int((~same_flags).sum())}; "
              f"largest |Δ| " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
        for _, r in m[~close].head(5).iterrows():
            print("   differs:", {k: r[k] for k in ID if k != "study"},
                  {v: (r[f"{v}_old"], r[f"{v}_new"]) for v in VALUES[:2]})
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
