"""Group Norm at small batches (Wu & He 2018, Fig. 1): BN's error grows as the
per-worker batch shrinks, GN's does not."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import analysis as A
from .. import plots as P
from .. import references as R
from ..claims import Claim, Evidence, greater, within
from ..report import Report, describe
from ..study import Study

FLAT = 1.5  # percentage points of test error: "flat" (about five digits test images); Wu & He's GN moves 0.2


def _errors(s: pd.DataFrame) -> pd.DataFrame:
    return s.assign(test_err=100 * (1 - s.final_test_acc))


def _ends(s: pd.DataFrame) -> tuple[int, int]:
    return int(s.batch_size.min()), int(s.batch_size.max())


def _change(norm_type: str, s: pd.DataFrame) -> pd.Series:
    """Per seed: test error at the smallest batch minus at the largest, for one norm type."""
    e = _errors(s[s.norm_type == norm_type])
    small, large = _ends(s)
    return A.paired(e, "test_err", "batch_size", small, large, ["seed"])


def _bn_rises(s, m) -> Evidence:
    small, large = _ends(s)
    return greater(_change("bn", s), f"BN test error (points), batch {small} − batch {large}", ".2f")


def _gn_flat(s, m) -> Evidence:
    small, large = _ends(s)
    return within(_change("gn", s), FLAT, f"GN test error (points), batch {small} − batch {large}", ".2f")


def _gn_beats_bn(s, m) -> Evidence:
    small, _ = _ends(s)
    e = _errors(s[s.batch_size == small])
    return greater(A.paired(e, "test_err", "norm_type", "bn", "gn", ["seed"]),
                   f"test error (points) at batch {small}, BN − GN", ".2f")


def error_table(s: pd.DataFrame) -> pd.DataFrame:
    """Long form: norm type, batch size, test error % (mean, t interval, failed runs); Δ(GN−BN) rows
    paired by seed where both trained; Wu & He's numbers beside."""
    err = _errors(s)
    t = A.summarize(err, ["norm_type", "batch_size"], "test_err")
    rows = []
    for bs, g in err[~A.failed(err)].groupby("batch_size"):
        diff = A.paired(g, "test_err", "norm_type", "gn", "bn", ["seed"])
        if len(diff):
            m, lo, hi = A.t_interval(diff)
            rows.append({"norm_type": "Δ(GN−BN)", "batch_size": bs, "n": len(diff), "n_diverged": 0, "n_collapsed": 0,
                         "mean": m, "lo": lo, "hi": hi})
    t = pd.concat([t, pd.DataFrame(rows)], ignore_index=True)
    ref = R.GN_WU_HE.values
    t["ref_err"] = [(ref["gn"][b] - ref["bn"][b]) if (n == "Δ(GN−BN)" and b in ref["bn"])
                    else ref.get(n, {}).get(b, np.nan) for n, b in zip(t.norm_type, t.batch_size)]
    return t


def build(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report(STUDY)
    t = error_table(s)
    t["cell"] = t.apply(lambda row: A.fmt_row(row, 1), axis=1)
    wide = t.pivot(index="norm_type", columns="batch_size", values="cell")
    ref = t.pivot(index="norm_type", columns="batch_size", values="ref_err")
    bss = sorted(t.batch_size.unique(), reverse=True)
    shown = pd.DataFrame({"norm": wide.index})
    for b in bss:
        shown[f"batch {b}"] = [("–" if pd.isna(wide.loc[n, b]) else wide.loc[n, b])
                               + ("" if pd.isna(ref.loc[n, b]) else f" (W&H {ref.loc[n, b]:.1f})") for n in wide.index]
    order = [n for n in ["bn", "gn", "ln", "in", "brn", "Δ(GN−BN)"] if n in set(shown.norm)]
    shown = shown.set_index("norm").loc[order + sorted(set(shown.norm) - set(order))].reset_index()
    g = t.set_index(["norm_type", "batch_size"])["mean"]
    small, large = _ends(s)
    wh = R.GN_WU_HE.values
    parts = [f"{n.upper()} {g.get((n, large), np.nan):.1f}% → {g.get((n, small), np.nan):.1f}%"
             for n in ("bn", "gn", "brn") if (n, small) in g.index]
    r.finding = (f"test error from batch {large} to {small} per worker: " + "; ".join(parts)
                 + f" (Wu & He: BN {wh['bn'][32]} → {wh['bn'][2]}, GN {wh['gn'][32]} → {wh['gn'][2]}).")
    workers = int(s.workers.iloc[0])
    scale = ("our fully connected net normalizes each feature over N values only, so the same mechanism -- "
             "statistics from too few values -- acts at a smaller scale, and at N = 2 in the extreme (each BN "
             "output is then ±1)" if (s.model_type == "mlp").all() else
             "ours normalizes each channel over N×H×W values of much smaller maps")
    r.notes = [f"Ours: {describe(s)}: each of the {workers} data-parallel workers normalizes its own {small}–{large} "
               f"images (unsynchronized BN, as on Wu & He's 8 GPUs), lr = 0.1·N/32, the same epochs at every batch, "
               f"BN evaluated with running averages. Reference: {R.GN_WU_HE.setting} ({R.GN_WU_HE.cite()}). "
               f"Wu & He's ResNet-50 normalizes each channel over N×7×7 values or more; {scale}. Compare the trend "
               f"with batch size, not the levels. Δ(GN−BN) is paired by seed."]
    r.table("error_by_batch", t.drop(columns="cell"),
            f"Test error (%) by batch size per worker, {A.INTERVAL}, Wu & He beside ours; {r.finding}", shown)
    ours = _errors(s[~A.failed(s)]).rename(columns={"norm_type": "norm type"})
    r.figure("error_vs_batch", P.with_reference(ours, "batch_size", "test_err", "norm type", "test error (%)",
                                                {k: v for k, v in wh.items()}, "Wu & He 2018 (ResNet-50, ImageNet)",
                                                "top-1 error (%)", "images per worker"),
             f"Test error vs batch size per worker: ours (mean, t 95% band, seeds) and Wu & He's published numbers "
             f"in their own panel; {r.finding}")
    return r


CLAIMS = (
    Claim("bn_rises", "BN's error rises as the batch per worker shrinks", "Wu & He 2018, Fig. 1 / Table 2",
          _bn_rises),
    Claim("gn_flat", f"GN's error stays flat as the batch shrinks (within ±{FLAT} points)",
          "Wu & He 2018, Fig. 1 / Table 2", _gn_flat),
    Claim("gn_beats_bn", "GN beats BN at the smallest batch", "Wu & He 2018, Fig. 1 (batch 2: 24.1 vs 34.7)",
          _gn_beats_bn),
)
STUDY = Study("gn_small_batch", "Group Norm at small batches", "Wu & He 2018", build, claims=CLAIMS,
              question="BN's error grows as the batch shrinks; does GN's?",
              tables={"error_by_batch": "norm × batch size"},
              figures={"error_vs_batch": "norm × batch size"})
