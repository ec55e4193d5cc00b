"""``normbench leaderboard``: every registered normalizer, and every one already evaluated, on one page.

Each normalizer is graded against BN on every axis the studies declare (``Study.card``), by the card's
rules (``normbench.scoring``: each at its best lr, chosen on other seeds than those that measure it);
the page ranks them per axis, shows the properties of each (measured in seconds, no training) and the
cost relative to BN, and draws one figure: normalizers × measures, each cell the verdict against BN with
the difference and its interval.  Markdown, CSV, HTML and the figure (PNG, SVG), from the runs alone.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots as P
from .card import COST_AXIS, arm_rows, arms, cost_rows, nets, property_table, tuning_text
from .card import topup as card_topup
from .scoring import BASELINES, BETTER, NOT_MEASURED, SAME, UNDECIDED, WORSE
from .store import write_text

REFERENCE = "bn"
COLORS = {BETTER: "#4daf4a", SAME: "#d9d9d9", WORSE: "#e41a1c", UNDECIDED: "#ffd92f", NOT_MEASURED: "#ffffff",
          "reference": "#9ecae1"}
WALL = "<!-- wall time -->"
FILES = ("README.md", "leaderboard.csv", "leaderboard.html", "leaderboard.png", "leaderboard.svg")


def _diff_text(ev) -> str:
    if ev is None or not math.isfinite(ev.estimate):
        return ""
    ci = f" [{ev.lo:+.3g}, {ev.hi:+.3g}]" if math.isfinite(ev.lo) else ""
    return f"{ev.estimate:+.3g}{ci}"


def build(norms: list[str], data: dict, arms_info: dict | None = None, props: pd.DataFrame | None = None,
          cost: pd.DataFrame | None = None) -> dict:
    """The long table: one row per normalizer and counted measure (its best-lr view where the arm
    sweeps), with its cell, the lr it used and its verdict against BN; the properties; the settings."""
    arms_info = arms_info or {}
    rows, setting, graded = [], {}, {}
    others = [n for n in norms if n != REFERENCE]
    for study, arm in arms():
        if study not in data:
            setting[arm.axis] = "not run in this config"
            continue
        s, m = data[study]
        setting[arm.axis] = f"{nets(s)}; {tuning_text(arm, arms_info.get(study))}"
        pool = [b for b in BASELINES if b in set(s.norm)]  # did any baseline train: all of them say
        memo: dict = {}
        for n in others:
            for r in arm_rows(study, arm, s, m, arms_info.get(study), n, [REFERENCE], pool, memo):
                rows.append(_row(r, n))
                graded.setdefault(n, []).append(r)
        for r in arm_rows(study, arm, s, m, arms_info.get(study), REFERENCE, [], memo=memo):
            rows.append(_row(r, REFERENCE))
    if cost is not None and len(cost):
        for n in others:
            rows += [_row(r, n) for r in cost_rows(cost, n, [REFERENCE])]
        setting[COST_AXIS] = f"every layer side by side in one process on {', '.join(sorted(set(cost.device)))}"
    long = pd.DataFrame(rows)
    return {"norms": norms, "rows": long, "setting": setting, "graded": graded,
            "properties": property_table(props, norms)}


def topup(lb: dict) -> pd.DataFrame:
    """The seed top-up hook (``card.topup``) over every normalizer's undecided verdicts against BN."""
    parts = [card_topup({"norm": n, "rows": rows}) for n, rows in lb["graded"].items()]
    return pd.concat(parts, ignore_index=True) if parts else card_topup({"norm": "", "rows": []})


def _row(r: dict, n: str) -> dict:
    ev = r["evidence"].get(REFERENCE)
    verdict = "reference" if n == REFERENCE else r["verdicts"].get(REFERENCE, "")
    return {"axis": r["axis"], "measure": r["measure"], "short": r["short"], "view": r["view"], "norm": n,
            "judged": r["judged"], "counts": r.get("counts", True), "cell": r["cells"].get(n, "–"),
            "lr": r["lrs"].get(n, ""), "verdict": verdict, "vs_bn": _diff_text(ev),
            "estimate": ev.estimate if ev else np.nan, "why": r.get("why", {}).get(REFERENCE, "")}


def _score(cell: str) -> float:
    """The mean a cell starts with ('0.85 [0.80, 0.90]', '1.20×'), for ranking."""
    m = re.match(r"\s*([-+]?\d[\d.e+-]*)", cell or "")
    try:
        return float(m.group(1)) if m else math.nan
    except ValueError:
        return math.nan


def rankings(lb: dict) -> dict[str, pd.DataFrame]:
    """Per axis, its first counted judged measure (cost: its time, shown, not graded): the normalizers
    from best to worst."""
    out = {}
    t = lb["rows"]
    if t.empty:
        return out
    better = {ms.name: ms.better for _, arm in arms() for ms in arm.measures}
    for axis, g in t[t.counts & (t.judged | (t.axis == COST_AXIS))].groupby("axis", sort=False):
        name = g.measure.iloc[0]
        h = g[g.measure == name].assign(score=lambda d: d.cell.map(_score))
        up = better.get(name, "lower" if axis == COST_AXIS else "higher") == "higher"
        h = h.sort_values("score", ascending=not up, na_position="last")
        out[f"{axis}: {name}"] = h[["norm", "cell", "lr", "verdict", "vs_bn"]].rename(
            columns={"cell": "value", "vs_bn": "difference from BN (signed: + is better)"}).reset_index(drop=True)
    return out


def figure(lb: dict):
    """Normalizers × counted judged measures, each cell coloured by its verdict against BN and labelled
    with the difference and its interval."""
    t = lb["rows"]
    t = t[t.judged & t.counts] if len(t) else t
    if t.empty:
        return P.empty("nothing graded")
    cols = list(dict.fromkeys(t.short))
    norms = list(dict.fromkeys(lb["norms"]))
    fig, ax = P.plt.subplots(figsize=(1.9 * len(cols) + 1.6, 0.42 * len(norms) + 1.4))
    for i, n in enumerate(norms):
        for j, c in enumerate(cols):
            cell = t[(t.norm == n) & (t.short == c)]
            v = cell.verdict.iloc[0] if len(cell) else NOT_MEASURED
            ax.add_patch(P.plt.Rectangle((j, i), 1, 1, color=COLORS.get(v, "#ffffff"), ec="white"))
            label = "BN" if v == "reference" else (cell.vs_bn.iloc[0] or v) if len(cell) else "–"
            ax.text(j + 0.5, i + 0.5, label, ha="center", va="center", fontsize=7)
    ax.set_xlim(0, len(cols))
    ax.set_ylim(len(norms), 0)
    ax.set_xticks(np.arange(len(cols)) + 0.5, cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(norms)) + 0.5, norms, fontsize=8)
    handles = [P.plt.Rectangle((0, 0), 1, 1, color=COLORS[k]) for k in (BETTER, SAME, WORSE, UNDECIDED)]
    ax.legend(handles, [f"{k} than BN" if k in (BETTER, WORSE) else k for k in (BETTER, SAME, WORSE, UNDECIDED)],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.set_title("verdict against BN (difference, t 95% interval; signed so + is better)", fontsize=9)
    fig.tight_layout()
    return fig


def write(lb: dict, out_dir: str | Path) -> None:
    out = Path(out_dir)
    t = lb["rows"]
    ranks = rankings(lb)
    fig = figure(lb)
    for ext in ("png", "svg"):
        P.save(fig, out / f"leaderboard.{ext}")
    P.close(fig)
    lines = [f"# Leaderboard: {len(lb['norms'])} normalizers", "",
             "Every registered normalizer and every one evaluated with `normbench evaluate` on this tier, each "
             "against BN on every axis of the report card (each at its best lr, chosen on other seeds than "
             "those that measure it), ranked per axis.", "", WALL, "", "![leaderboard](leaderboard.png)", "",
             "## Properties (measured before any training)", "",
             lb["properties"].to_markdown(index=False) if len(lb["properties"]) else "not measured", ""]
    for title, r in ranks.items():
        lines += [f"## {title}", "", r.to_markdown(index=True), ""]
    lines += ["## Setting", "", *[f"- {a}: {s}" for a, s in lb["setting"].items()], ""]
    why = t[t.why.astype(bool)] if len(t) else t
    if len(why):
        lines += ["## Not measured, and why", "",
                  *[f"- {r.norm}, {r.measure}" + (f" ({r.view})" if r.view else "") + f": {r.why}"
                    for r in why.itertuples()], ""]
    lines += ["[CSV: every cell](leaderboard.csv)"]
    write_text(t.to_csv(index=False) if len(t) else "", out / "leaderboard.csv")
    body = "".join(f"<h2>{html.escape(k)}</h2>{v.to_html(border=0)}" for k, v in ranks.items())
    write_text("<!doctype html><html><head><meta charset='utf-8'><style>table{border-collapse:collapse;"
               "font-family:sans-serif;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd}</style>"
               f"</head><body><h1>Leaderboard</h1><p>{WALL}</p><img src='leaderboard.svg'>"
               f"<h2>Properties</h2>{lb['properties'].to_html(index=False, border=0)}{body}</body></html>",
               out / "leaderboard.html")
    write_text("\n".join(lines) + "\n", out / "README.md")


def stamp(out_dir: str | Path, seconds: float) -> None:
    """The page states how long the whole command took to make it (training included)."""
    for name in ("README.md", "leaderboard.html"):
        path = Path(out_dir) / name
        if path.exists():
            text = re.sub(r"<!-- wall time -->.*?(?=\n|</p>|$)",
                          f"{WALL} Measured: this page took {seconds:.0f} s wall (the whole `normbench "
                          f"leaderboard` command, training of the runs not yet finished included).",
                          path.read_text(), count=1)
            write_text(text, path)
