"""The report card of ``normbench evaluate``: one row per measure of each axis, NORM's number
beside each baseline's (Student-t 95% intervals over seeds), and a verdict against each baseline
by the claims' own rules (``claims.greater`` / ``claims.within`` on paired per-seed differences):

* **same**: the interval of the difference lies inside ± the measure's margin (``within``);
* **better** / **worse**: otherwise, the interval lies wholly on the better / worse side of 0
  (``greater``, reproduced / not reproduced);
* **undecided**: neither (or fewer than 3 pairs).

Read from the battery's aggregated Parquet alone (no config, no training).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import analysis as A
from .claims import NOT_REPRODUCED, REPRODUCED, Evidence, greater, within
from .report import _html_table, describe
from .store import METRICS_SCHEMA, SUMMARY_SCHEMA, read_parquet, write_text
from .studies.gn_small_batch import FLAT

BETTER, SAME, WORSE, UNDECIDED, NOT_MEASURED = "better", "same", "worse", "undecided", "not measured"
LOG_CLIP = 45.0  # |log10| of an activation ratio: float32 has no smaller positive number than ~1e-45


def verdict(diffs, margin: float, what: str, fmt: str = ".3g") -> tuple[str, Evidence]:
    """``diffs``: paired per-seed differences NORM − baseline, signed so that positive is better."""
    same = within(diffs, margin, what, fmt)
    if same.verdict == REPRODUCED:
        return SAME, same
    up = greater(diffs, what, fmt)
    if up.verdict == REPRODUCED:
        return BETTER, up
    if up.verdict == NOT_REPRODUCED:
        return WORSE, up
    return UNDECIDED, up


# -- per-seed values: one function per measure, (summary, metrics) -> norm, pair keys, value --------


def lr_rank(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """Per batch size and seed: how many steps up the lr grid the seed's largest lr that trained
    (neither diverged nor collapsed) is; 0 if it trained at none."""
    rows = []
    for bs, g in s.groupby("batch_size"):
        grid = sorted(g.lr.unique())
        ok = g.assign(ok=~A.failed(g))
        for (norm, seed), h in ok.groupby(["norm", "seed"]):
            top = [grid.index(lr) + 1 for lr in h.lr[h.ok]]
            rows.append({"norm": norm, "batch_size": bs, "seed": seed, "value": float(max(top, default=0))})
    return pd.DataFrame(rows, columns=["norm", "batch_size", "seed", "value"])


def every_seed_lr(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """Per batch size: the largest lr at which every seed trained (``analysis.max_stable_lr``)."""
    t = A.max_stable_lr(s)
    return t.assign(value=t.max_trained_lr)[["norm", "batch_size", "value"]]


def per_batch(values: pd.Series, rows: pd.DataFrame) -> str:
    return ", ".join(f"{v:g} at batch {b}" if math.isfinite(v) else f"none at batch {b}"
                     for b, v in zip(rows.batch_size, values)) or "–"


def small_batch_error(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """Test error (%) at the smallest batch per worker; a diverged run counts at chance."""
    g = s[s.batch_size == s.batch_size.min()]
    acc = g.final_test_acc.where(~g.diverged.astype(bool), g.chance_acc)
    return g.assign(value=100 * (1 - acc))[["norm", "seed", "value"]]


def error_rise(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """Test error (%) at the smallest batch minus at the largest, per seed (shown, not judged)."""
    e = s.assign(err=100 * (1 - s.final_test_acc.where(~s.diverged.astype(bool), s.chance_acc)))
    small, large = e[e.batch_size == e.batch_size.min()], e[e.batch_size == e.batch_size.max()]
    d = small.set_index(["norm", "seed"]).err - large.set_index(["norm", "seed"]).err
    return d.rename("value").reset_index()


def activation_scale(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """log10(activation std at the last layer / at the first) at initialization (the first probe)."""
    a = m[(m.metric == "act_std") & (m.step == m[m.metric == "act_std"].step.min())]
    rows = []
    for (norm, seed), g in a.groupby(["norm", "seed"]):
        g = A.layer_index(g)
        first, last = g[g.depth == g.depth.min()].value.iloc[0], g[g.depth == g.depth.max()].value.iloc[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = float(np.log10(np.float64(last) / np.float64(first)))
        r = LOG_CLIP if math.isnan(r) else float(np.clip(r, -LOG_CLIP, LOG_CLIP))  # nan: inf / inf, exploded
        rows.append({"norm": norm, "seed": seed, "value": r})
    return pd.DataFrame(rows, columns=["norm", "seed", "value"])


def scale_drift(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """How far the activation scale drifts through depth: |log10(std last / std first)|."""
    d = activation_scale(s, m)
    return d.assign(value=d.value.abs())


def final_acc(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    acc = s.final_test_acc.where(~s.diverged.astype(bool), s.chance_acc)
    return s.assign(value=acc)[["norm", "seed", "value"]]


def probe_log(metric: str) -> Callable:
    def values(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
        """log10 of the run's median ``metric`` over its probes."""
        d = m[m.metric == metric].groupby(["norm", "seed"]).value.median()
        return np.log10(d.clip(lower=1e-30)).rename("value").reset_index()
    return values


def cost_log(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """``s`` is the cost table here: log10 seconds per forward + backward, per round."""
    return s.assign(value=np.log10(s.seconds))[["norm", "round", "value"]]


@dataclass(frozen=True)
class Measure:
    axis: str
    name: str  # what it measures, with its unit
    study: str  # whose Parquet it reads ("cost": the cost table)
    values: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]
    short: str  # its name in an axis line
    better: str  # "higher" | "lower"
    margin: float  # "same" if the paired difference lies inside ± this
    margin_text: str
    show: Callable[[float], str] = lambda v: f"{v:.3g}"
    judged: bool = True  # False: shown beside, no verdict
    cell: Callable[[pd.Series, pd.DataFrame], str] | None = None  # a norm's cell, if not mean [t interval]

    @property
    def keys(self) -> list[str]:
        return {"lr_bs_sweep": ["batch_size", "seed"], "cost": ["round"]}.get(self.study, ["seed"])


MEASURES = (
    Measure("learning-rate robustness", "largest lr at which every seed trained", "lr_bs_sweep", every_seed_lr,
            "every seed", "higher", 0.0, "", judged=False, cell=per_batch),
    Measure("learning-rate robustness", "largest lr that trained (steps up the lr grid, per batch size and seed)",
            "lr_bs_sweep", lr_rank, "lr", "higher", 0.5, "half a grid step"),
    Measure("batch robustness", "test error (%) at the smallest batch per worker", "gn_small_batch",
            small_batch_error, "smallest batch", "lower", FLAT, f"{FLAT} points (gn_small_batch's 'flat')",
            lambda v: f"{v:.1f}"),
    Measure("batch robustness", "rise in test error (points) from the largest to the smallest batch",
            "gn_small_batch", error_rise, "rise", "lower", FLAT, "", lambda v: f"{v:+.1f}", judged=False),
    Measure("depth", "|log10(activation std, last / first layer)| at init, 100 plain conv layers", "depth_stats",
            scale_drift, "activation scale", "lower", math.log10(2), "a factor of 2"),
    Measure("depth", "test accuracy of the 100-layer plain conv net after its budget", "depth_stats", final_acc,
            "training", "higher", 0.05, "5 points"),
    Measure("landscape smoothness", "effective β-smoothness (log10, median over probes)", "santurkar",
            probe_log("beta_eff"), "β_eff", "lower", math.log10(2), "a factor of 2",
            lambda v: f"{10 ** v:.3g}"),
    Measure("landscape smoothness", "gradient predictiveness, max ‖∇L(W − ηg) − g‖ (log10, median over "
            "probes)",
            "santurkar", probe_log("grad_pred_max"), "gradient predictiveness", "lower", math.log10(2),
            "a factor of 2", lambda v: f"{10 ** v:.3g}"),
    Measure("cost", "forward + backward time of one layer on 32×16×16×16, µs (this machine)", "cost", cost_log,
            "time", "lower", math.log10(1.25), "25%", lambda v: f"{1e6 * 10 ** v:.0f}"),
)


def _cell(values: pd.Series, show) -> str:
    mean, lo, hi = A.t_interval(values)
    if not math.isfinite(mean):
        return "–"
    return show(mean) + (f" [{show(lo)}, {show(hi)}]" if math.isfinite(lo) else "")


def grade(measure: Measure, values: pd.DataFrame, norm: str, baselines: list[str]) -> tuple[dict, dict, dict]:
    """Cells (norm -> 'mean [lo, hi]'), verdicts and evidence (baseline -> …) of one measure."""
    cells = {n: (measure.cell(values[values.norm == n].value, values[values.norm == n]) if measure.cell
                 else _cell(values[values.norm == n].value, measure.show)) for n in [norm, *baselines]}
    verdicts, evidence = {}, {}
    sign = 1.0 if measure.better == "higher" else -1.0
    for b in baselines:
        if not measure.judged or (values.norm == b).sum() == 0 or (values.norm == norm).sum() == 0:
            verdicts[b] = NOT_MEASURED if measure.judged else ""
            continue
        diffs = sign * A.paired(values, "value", "norm", norm, b, measure.keys)
        verdicts[b], evidence[b] = verdict(diffs, measure.margin, f"{norm} vs {b}, {measure.name}, "
                                           f"{'higher' if sign > 0 else 'lower'} is better (signed so + is better)")
    return cells, verdicts, evidence


def axis_line(rows: list[dict], baselines: list[str]) -> str:
    """One line per axis: per baseline the verdict its measures agree on, else 'mixed' with each."""
    by: dict[str, list[str]] = {}
    for b in baselines:
        vs = [(r["verdicts"][b], r["short"]) for r in rows if r["judged"] and r["verdicts"][b] != NOT_MEASURED]
        v = (NOT_MEASURED if not vs else vs[0][0] if len({w for w, _ in vs}) == 1
             else "mixed (" + "; ".join(f"{w}: {s}" for w, s in vs) + ")")
        by.setdefault(v, []).append(b)
    words = {BETTER: "better than", SAME: "the same as", WORSE: "worse than", UNDECIDED: "undecided against",
             NOT_MEASURED: "not measured against"}
    return "; ".join(f"{words.get(v, v + ' against')} {', '.join(bs)}" for v, bs in by.items())


def build(norm: str, baselines: list[str], data: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> dict:
    """``data``: study -> (summary, metrics) of the battery, and "cost" -> (cost table, empty).  Every
    measure graded; an absent study leaves its measures 'not measured'."""
    rows = []
    for ms in MEASURES:
        if ms.study not in data:
            rows.append({"axis": ms.axis, "measure": ms.name, "short": ms.short, "cells": {}, "judged": ms.judged,
                         "verdicts": {b: NOT_MEASURED for b in baselines}, "evidence": {}, "margin": ms.margin_text})
            continue
        s, m = data[ms.study]
        cells, verdicts, evidence = grade(ms, ms.values(s, m), norm, baselines)
        rows.append({"axis": ms.axis, "measure": ms.name, "short": ms.short, "cells": cells, "verdicts": verdicts,
                     "judged": ms.judged,
                     "evidence": evidence, "margin": ms.margin_text})
    axes = {}
    for r in rows:
        axes.setdefault(r["axis"], []).append(r)
    setting = {ms.axis: _runs(describe(data[ms.study][0])) if ms.study in data else "not run in this config"
               for ms in MEASURES if ms.study != "cost"}
    return {"norm": norm, "baselines": baselines, "rows": rows, "setting": setting,
            "summary": {a: axis_line(rs, baselines) for a, rs in axes.items()}}


def _runs(text: str) -> str:
    """A layer list of one width repeated (the 100-layer net) written as [8] × 100."""
    return re.sub(r"\[(\d+)(?:, \1\b)+\]", lambda m: f"[{m.group(1)}] × {m.group(0).count(',') + 1}", text)


def read(studies: dict[str, tuple[str, str]], cost_path: str | None) -> dict:
    data = {st: (read_parquet(s, SUMMARY_SCHEMA), read_parquet(m, METRICS_SCHEMA)) for st, (s, m) in studies.items()}
    if cost_path:
        data["cost"] = (pd.read_parquet(cost_path), pd.DataFrame())
    return data


def table(card: dict) -> pd.DataFrame:
    norm, bl = card["norm"], card["baselines"]
    out = []
    for r in card["rows"]:
        out.append({"axis": r["axis"], "measure": r["measure"], norm: r["cells"].get(norm, "–"),
                    **{b: r["cells"].get(b, "–") for b in bl},
                    **{f"vs {b}": r["verdicts"].get(b, "") for b in bl}, "same within": r["margin"]})
    return pd.DataFrame(out)


def write(card: dict, out_dir: str | Path) -> None:
    """README.md (the card), card.csv (its table) and card.html (for the Snakemake report)."""
    out, norm = Path(out_dir), card["norm"]
    t = table(card)
    lines = [f"# Report card: {norm}", "",
             f"`{norm}` beside the baselines {', '.join(card['baselines'])} on each axis: {A.INTERVAL}, "
             f"paired by seed (cost: by alternating round). A verdict is *same* if the interval of the paired "
             f"difference lies inside the margin, else *better*/*worse* if it lies wholly on one side of 0, else "
             f"*undecided* (the claims' Student-t rules).", "", "## Verdicts", ""]
    lines += [f"- **{a}**: {norm} is {line}." for a, line in card["summary"].items()]
    lines += ["", "## Measures", "", t.to_markdown(index=False), "", "[CSV](card.csv)", "", "## Setting", ""]
    lines += [f"- {axis}: {text}" for axis, text in card.get("setting", {}).items()]
    lines += ["", "## Evidence", ""]
    for r in card["rows"]:
        for b, ev in r["evidence"].items():
            lines.append(f"- {ev.measured}" + (f" — {ev.note}" if ev.note else ""))
    lines += ["", "Runs that diverged count at chance accuracy; cost is measured on the machine that ran the card, "
              "one thread, each layer alone."]
    write_text(t.to_csv(index=False), out / "card.csv")
    write_text(_html_table(t, f"Report card of {norm}: " + "; ".join(f"{a}: {line}" for a, line in
                                                                   card["summary"].items())), out / "card.html")
    write_text("\n".join(lines) + "\n", out / "README.md")
