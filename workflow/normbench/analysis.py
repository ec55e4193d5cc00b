"""Tables from aggregated Parquet: DataFrame in, DataFrame out.

Statistics are over seeds: the mean with a percentile-bootstrap 95% interval
(fixed bootstrap seed, so reports are reproducible).  Diverged runs are never
averaged in and never dropped silently: every table carries the count of
diverged seeds, and a cell whose seeds all diverged says so.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

BOOT_SEED = 0
N_BOOT = 2000


def bootstrap_ci(values, n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = 0.95):
    """(mean, lo, hi): percentile bootstrap of the mean.  One value: lo = hi = it."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return (np.nan, np.nan, np.nan)
    if len(x) == 1:
        return (float(x[0]),) * 3
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1)
    a = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def summarize(df: pd.DataFrame, by: list[str], value: str, scale: float = 1.0) -> pd.DataFrame:
    """Per group: n runs, n diverged, and mean [lo, hi] of ``value`` over the others."""
    rows = []
    for key, g in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        div = g["diverged"].astype(bool)
        mean, lo, hi = bootstrap_ci(g.loc[~div, value] * scale)
        rows.append({**dict(zip(by, key)), "n": len(g), "n_diverged": int(div.sum()),
                     "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=by + ["n", "n_diverged", "mean", "lo", "hi"])


def fmt(mean, lo, hi, n=None, n_div=0, digits=3) -> str:
    """'0.912 [0.901, 0.925]', with the diverged seeds named, or 'diverged (3/3)'."""
    if n is not None and n_div == n:
        return f"diverged ({n_div}/{n})"
    if not np.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f}" if lo == hi else f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text + (f" ({n_div}/{n} diverged)" if n_div else "")


def fmt_row(r: pd.Series, digits=3) -> str:
    return fmt(r["mean"], r["lo"], r["hi"], r["n"], r["n_diverged"], digits)


# ----------------------------------------------------------------------------
# BN before / after the nonlinearity
# ----------------------------------------------------------------------------


def _affine(options_json: str) -> bool:
    return bool(json.loads(options_json or "{}").get("affine", True))


def placement_variant(row) -> str:
    """caffenet-benchmark's row names, from what the run was (not its id)."""
    act = {"relu": "ReLU", "identity": "no activation"}.get(row["activation"], row["activation"])
    if row["norm_type"] == "none":
        return "no BN" if row["activation"] == "relu" else f"no BN, {act}"
    if row["norm_type"] != "bn":
        return f"{row['norm']} {row['placement']} {act}"
    where = "before" if row["placement"] == "pre" else "after"
    return f"BN {where} {act}" + (" + scale&bias" if _affine(row["norm_options"]) else "")


def bn_placement_table(summary: pd.DataFrame) -> pd.DataFrame:
    from .references import CAFFENET_ACTIVATIONS, CAFFENET_PLACEMENT

    s = summary.assign(variant=summary.apply(placement_variant, axis=1))
    acc = summarize(s, ["variant"], "final_test_acc")
    loss = summarize(s, ["variant"], "final_test_loss")
    train = summarize(s, ["variant"], "final_train_loss")
    out = []
    order = list(CAFFENET_PLACEMENT.values) + sorted(set(acc.variant) - set(CAFFENET_PLACEMENT.values))
    for v in [v for v in order if v in set(acc.variant)]:
        a, lo, tr = (t[t.variant == v].iloc[0] for t in (acc, loss, train))
        ref = CAFFENET_PLACEMENT.values.get(v)
        if ref is None and v.startswith("BN after ") and v.endswith("+ scale&bias"):
            act = v[len("BN after "):-len(" + scale&bias")].lower().replace("no activation", "identity")
            ref = CAFFENET_ACTIVATIONS.values.get(act)
        out.append({"variant": v, "test_acc": a["mean"], "test_acc_lo": a["lo"], "test_acc_hi": a["hi"],
                    "test_loss": lo["mean"], "test_loss_lo": lo["lo"], "test_loss_hi": lo["hi"],
                    "train_loss": tr["mean"], "n": a["n"], "diverged": a["n_diverged"],
                    "ref_acc": ref[0] if ref else np.nan, "ref_log_loss": ref[1] if ref else np.nan})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------
# GN at small batches
# ----------------------------------------------------------------------------


def gn_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Long form: norm, batch_size, test error % (mean, CI), diverged; plus Δ(GN−BN)
    rows computed per seed (paired) where both ran, and Wu & He's numbers."""
    from .references import GN_WU_HE

    err = summary.assign(test_err=100 * (1 - summary.final_test_acc))
    t = summarize(err, ["norm_type", "batch_size"], "test_err")
    # Δ(GN − BN): paired by seed, only where neither diverged
    key = ["batch_size", "seed"]
    gn = err[(err.norm_type == "gn") & ~err.diverged].set_index(key).test_err
    bn = err[(err.norm_type == "bn") & ~err.diverged].set_index(key).test_err
    diff = (gn - bn).dropna().reset_index()
    rows = []
    for bs, g in diff.groupby("batch_size"):
        m, lo, hi = bootstrap_ci(g.test_err)
        rows.append({"norm_type": "Δ(GN−BN)", "batch_size": bs, "n": len(g), "n_diverged": 0,
                     "mean": m, "lo": lo, "hi": hi})
    t = pd.concat([t, pd.DataFrame(rows)], ignore_index=True)
    ref = GN_WU_HE.values
    t["ref_err"] = [
        (ref["gn"][b] - ref["bn"][b]) if (n == "Δ(GN−BN)" and b in ref["bn"])
        else ref.get(n, {}).get(b, np.nan) for n, b in zip(t.norm_type, t.batch_size)]
    return t


# ----------------------------------------------------------------------------
# LR × batch size
# ----------------------------------------------------------------------------


def accuracy_grid(summary: pd.DataFrame) -> pd.DataFrame:
    """norm, batch_size, lr: mean final test accuracy and diverged seeds."""
    return summarize(summary, ["norm", "batch_size", "lr"], "final_test_acc")


def max_stable_lr(summary: pd.DataFrame, chance: float = 0.1) -> pd.DataFrame:
    """Per norm and batch size: the largest lr at which no seed diverged (non-finite
    loss or loss above the bound; NaN: none), and -- since a net can also collapse
    to constant outputs without diverging -- the largest lr at which every seed
    trained (final test accuracy at least twice ``chance``)."""
    rows = []
    for (norm, bs), g in summary.groupby(["norm", "batch_size"]):
        per_lr = g.groupby("lr").diverged.any()
        stable = per_lr[~per_lr]
        trained = g.groupby("lr").apply(lambda h: bool((~h.diverged & (h.final_test_acc >= 2 * chance)).all()))
        ok = trained[trained]
        rows.append({"norm": norm, "batch_size": bs, "max_stable_lr": stable.index.max() if len(stable) else np.nan,
                     "max_trained_lr": ok.index.max() if len(ok) else np.nan,
                     "lrs_tried": len(per_lr), "lrs_diverged": int(per_lr.sum()),
                     "lrs_not_trained": int((~trained).sum())})
    return pd.DataFrame(rows)


def steps_to_target(summary: pd.DataFrame, baseline: str = "none") -> pd.DataFrame:
    """Per norm and batch size, at its best lr (fewest mean steps among lrs where
    every seed reached the target): steps and examples, and the speed-up over
    ``baseline`` at the same batch size (the BN paper's steps-to-72.2% table)."""
    rows = []
    for (norm, bs), g in summary.groupby(["norm", "batch_size"]):
        best = None
        for lr, h in g.groupby("lr"):
            if h.steps_to_target.notna().all() and not h.diverged.any():
                m = h.steps_to_target.mean()
                if best is None or m < best[1]:
                    best = (lr, m, h)
        if best is None:
            rows.append({"norm": norm, "batch_size": bs, "best_lr": np.nan, "steps": np.nan, "steps_lo": np.nan,
                         "steps_hi": np.nan, "examples": np.nan, "n": len(g)})
            continue
        lr, _, h = best
        m, lo, hi = bootstrap_ci(h.steps_to_target)
        rows.append({"norm": norm, "batch_size": bs, "best_lr": lr, "steps": m, "steps_lo": lo, "steps_hi": hi,
                     "examples": m * bs, "n": len(h)})
    t = pd.DataFrame(rows)
    base = t[t.norm == baseline].set_index("batch_size").steps
    t["speedup"] = [base.get(b, np.nan) / s if s else np.nan for b, s in zip(t.batch_size, t.steps)]
    return t


# ----------------------------------------------------------------------------
# Probes
# ----------------------------------------------------------------------------


def probe_summary(metrics: pd.DataFrame, metric: str, by: list[str], early_frac: float | None = None) -> pd.DataFrame:
    """Median of a probe metric per group (over layers, steps and seeds);
    ``early_frac`` keeps the first fraction of training only."""
    m = metrics[metrics.metric == metric]
    if early_frac is not None and len(m):
        m = m[m.step <= m.step.max() * early_frac]
    return m.groupby(by).value.median().reset_index()


def layer_index(metrics: pd.DataFrame) -> pd.DataFrame:
    """Add each layer's depth index (order of first appearance in forward order)."""
    m = metrics.dropna(subset=["layer"]).copy()
    order = {}
    for layer in m.layer:
        order.setdefault(layer, len(order))
    m["depth"] = m.layer.map(order)
    return m
