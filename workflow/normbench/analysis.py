"""Statistics over seeds and the generic tables: DataFrame in, DataFrame out.

Intervals are Student-t 95% intervals of the mean over seeds (paired
differences for comparisons): their coverage holds at the 3–5 seeds a study
runs, where a percentile bootstrap of 3 values spans about [min, max] and
covers the mean only ~75% of the time.  Failed runs -- diverged (non-finite or
exploding loss) or collapsed (ending at chance) -- are never averaged in and
never dropped silently: every table counts them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import intervals
from .store import PARAM_COLUMNS

LEVEL = 0.95
INTERVAL = "mean with a Student-t 95% interval over seeds"


def t_interval(values, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi) of the finite values; one value: lo = hi = NaN (no interval)."""
    return intervals.t_interval(values, level)


def failed(df: pd.DataFrame) -> pd.Series:
    """Diverged or collapsed: the run did not train."""
    return df["diverged"].astype(bool) | df.get("collapsed", pd.Series(False, index=df.index)).fillna(False).astype(bool)


def summarize(df: pd.DataFrame, by: list[str], value: str, scale: float = 1.0, drop_failed: str = "diverged"
              ) -> pd.DataFrame:
    """Per group: n runs, n diverged, n collapsed, and mean [lo, hi] of ``value`` over
    the runs that did not diverge (``drop_failed="failed"``: nor collapse)."""
    rows = []
    for key, g in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        div = g["diverged"].astype(bool)
        col = g["collapsed"].fillna(False).astype(bool) if "collapsed" in g else pd.Series(False, index=g.index)
        out = div | col if drop_failed == "failed" else div
        mean, lo, hi = t_interval(g.loc[~out, value] * scale)
        rows.append({**dict(zip(by, key)), "n": len(g), "n_diverged": int(div.sum()), "n_collapsed": int(col.sum()),
                     "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=by + ["n", "n_diverged", "n_collapsed", "mean", "lo", "hi"])


def fmt(mean, lo, hi, n=None, n_div=0, digits=3, n_col=0) -> str:
    """'0.912 [0.901, 0.925]', with failed seeds named, or 'diverged (3/3)'."""
    if n is not None and n_div == n:
        return f"diverged ({n_div}/{n})"
    if not np.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f}" if not np.isfinite(lo) else f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    text += f" ({n_div}/{n} diverged)" if n_div else ""
    return text + (f" ({n_col}/{n} collapsed)" if n_col else "")


def fmt_row(r: pd.Series, digits=3) -> str:
    return fmt(r["mean"], r["lo"], r["hi"], r["n"], r["n_diverged"], digits, r.get("n_collapsed", 0))


def paired(df: pd.DataFrame, value: str, column: str, a, b, on: list[str]) -> pd.Series:
    """Per seed (and any other ``on`` columns): value where column == a minus value where
    column == b, over the pairs present in both."""
    left = df[df[column] == a].set_index(on)[value]
    right = df[df[column] == b].set_index(on)[value]
    return (left - right).dropna()


def max_stable_lr(summary: pd.DataFrame) -> pd.DataFrame:
    """Per norm and batch size: the largest lr at which no seed diverged (non-finite
    or exploding loss), and the largest at which every seed trained -- neither
    diverged nor collapsed to chance accuracy."""
    rows = []
    for (norm, bs), g in summary.groupby(["norm", "batch_size"]):
        per_lr = g.groupby("lr").diverged.any()
        stable = per_lr[~per_lr]
        trained = g.assign(ok=~failed(g)).groupby("lr").ok.all()
        ok = trained[trained]
        rows.append({"norm": norm, "batch_size": bs, "max_stable_lr": stable.index.max() if len(stable) else np.nan,
                     "max_trained_lr": ok.index.max() if len(ok) else np.nan,
                     "lrs_tried": len(per_lr), "lrs_diverged": int(per_lr.sum()),
                     "lrs_not_trained": int((~trained).sum())})
    return pd.DataFrame(rows)


def steps_to_target(summary: pd.DataFrame, baseline: str = "none") -> pd.DataFrame:
    """Per norm and batch size, at its best lr (fewest mean steps among lrs where
    every seed reached the target): steps and examples, and the speed-up over the
    ``baseline`` norm type at the same batch size (the BN paper's steps-to-72.2% table)."""
    rows = []
    for (norm, bs), g in summary.groupby(["norm", "batch_size"]):
        best = None
        for lr, h in g.groupby("lr"):
            if h.steps_to_target.notna().all() and not h.diverged.any():
                m = h.steps_to_target.mean()
                if best is None or m < best[1]:
                    best = (lr, m, h)
        row = {"norm": norm, "norm_type": g.norm_type.iloc[0], "batch_size": bs, "n": len(g)}
        if best is None:
            rows.append({**row, "best_lr": np.nan, "steps": np.nan, "steps_lo": np.nan, "steps_hi": np.nan,
                         "examples": np.nan})
            continue
        lr, _, h = best
        m, lo, hi = t_interval(h.steps_to_target)
        rows.append({**row, "best_lr": lr, "steps": m, "steps_lo": lo, "steps_hi": hi,
                     "examples": m * bs * int(h.workers.iloc[0])})
    t = pd.DataFrame(rows)
    base = t[t.norm_type == baseline].groupby("batch_size").steps.min()
    t["speedup"] = [base.get(b, np.nan) / s if s else np.nan for b, s in zip(t.batch_size, t.steps)]
    return t


def with_runs(metrics: pd.DataFrame, summary: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Metrics rows joined with what their runs were (``norm_type``, ``model_type``, …)."""
    keep = [c for c in columns if c not in metrics.columns]
    return metrics.merge(summary[PARAM_COLUMNS + keep], on=PARAM_COLUMNS, how="left")


def per_run(metrics: pd.DataFrame, metric: str, stat: str = "median", steps=None) -> pd.DataFrame:
    """One value per run of a probe metric (``stat`` over layers and steps), keyed by its parameters."""
    m = metrics[metrics.metric == metric]
    if steps is not None:
        m = m[m.step.isin(steps)]
    extra = [c for c in ("norm_type", "model_type", "label") if c in m.columns]
    return m.groupby(PARAM_COLUMNS + extra, dropna=False).value.agg(stat).reset_index()


def layer_index(metrics: pd.DataFrame) -> pd.DataFrame:
    """Add each layer's depth index (order of first appearance in forward order)."""
    m = metrics.dropna(subset=["layer"]).copy()
    order: dict = {}
    for layer in m.layer:
        order.setdefault(layer, len(order))
    m["depth"] = m.layer.map(order)
    return m
