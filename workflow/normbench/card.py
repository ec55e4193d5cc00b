"""The report card of ``normbench evaluate``: what a reviewer checks first (the properties, measured
before any training), then one row per measure of each axis -- the normalizer's number beside each
baseline's (Student-t 95% intervals over seeds, each cell saying the lr it used) and a verdict against
each baseline by ``normbench.scoring``'s rules -- then the cost.

The axes are the studies' (``Study.card``): nothing here names a study.  Read from the arms' run
files, the properties table and the cost table alone (no config, no training).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import analysis as A
from . import properties as Pr
from .report import _html_table, describe
from .scoring import (BEST, BETTER, NOT_MEASURED, ONE, SAME, SHARED, UNDECIDED, WORSE, Measure, View, grade,
                      views)
from .store import METRICS_SCHEMA, SUMMARY_SCHEMA, read_runs, write_text
from .studies import STUDIES

PROPERTIES_AXIS, COST_AXIS = "properties", "cost"
WORDS = {BETTER: "better than", SAME: "the same as", WORSE: "worse than", UNDECIDED: "undecided against",
         NOT_MEASURED: "not measured against"}


def card_arms() -> list[tuple[str, object]]:
    """(study, its CardArm) for every study that declares one, in the card's order."""
    arms = [(name, st.card) for name, st in STUDIES.items() if st.card is not None]
    return sorted(arms, key=lambda a: (a[1].order, a[0]))


arms = card_arms


# -- the axes of the studies ---------------------------------------------------------------------------


def arm_rows(study: str, arm, s: pd.DataFrame, m: pd.DataFrame, info: dict | None, norm: str,
             baselines: list[str], pool=None, memo: dict | None = None) -> list[dict]:
    """Every measure of one arm graded on its views: at the best lr (the axis's verdict) and at the shared
    lr beside it where the arm sweeps; on its one view where it does not.  ``memo``: one dict per arm
    kept across a page's normalizers, so its views and values are computed once, not once per norm."""
    memo = {} if memo is None else memo
    if "views" not in memo:
        memo["views"] = views(arm, s, m, info)
    vs = memo["views"]
    rows = []
    for ms in arm.measures:
        names = [ONE] if ONE in vs else ([BEST, SHARED] if ms.tuned and ms.beside else [BEST] if ms.tuned
                                         else [SHARED])
        for name in names:
            view = vs[name]
            what = f", at {name}" if name != ONE else ""
            row = grade(ms, view, norm, baselines, what, pool, memo)
            rows.append({**row, "axis": arm.axis, "study": study, "counts": name in (BEST, ONE) or not ms.tuned})
    return rows


def absent_rows(arm, norm: str, baselines: list[str], why: str) -> list[dict]:
    return [{"axis": arm.axis, "study": None, "measure": ms.name, "short": ms.short, "view": "", "judged": ms.judged,
             "cells": {}, "lrs": {}, "verdicts": {b: NOT_MEASURED if ms.judged else "" for b in baselines},
             "evidence": {}, "why": {b: why for b in baselines} if ms.judged else {}, "margin": ms.margin_text,
             "reads": {}, "counts": True} for ms in arm.measures]


def tuning_text(arm, info: dict | None) -> str:
    if arm.tune is None or not info:
        return f"one lr: {arm.one_lr}" if arm.one_lr else "one lr"
    t = arm.tune
    lrs = ", ".join(f"{f * info['shared_lr']:g}" for f in t.factors)
    per = f" (per {', '.join(t.group).replace('_', ' ')})" if t.group else ""
    return (f"each normalizer at its best {t.what}{per} from {{{lrs}}}, chosen by its mean on seeds "
            f"{', '.join(map(str, info['select']))} (the same rule for every normalizer) and measured on the other "
            f"seeds; the shared {t.what} {info['shared_lr']:g} (every seed) beside it")


# -- cost --------------------------------------------------------------------------------------------


def _relative(cost: pd.DataFrame, column: str) -> pd.DataFrame:
    """log10(value / BN's) per round: the card's cost values, relative to BN measured beside it."""
    c = cost.assign(v=np.log10(cost[column].astype(float).clip(lower=1e-12)))
    bn = c[c.norm == "bn"].set_index("round").v
    return c.assign(value=c.v - c["round"].map(bn))[["norm", "round", "value"]]


def _ratio(v: float) -> str:
    return f"{10 ** v:.2f}×"


def cost_rows(cost: pd.DataFrame | None, norm: str, baselines: list[str]) -> list[dict]:
    """Time and peak memory relative to BN, per device (memory is deterministic: its rounds agree
    exactly).  Shown, never graded: they measure an implementation, not the function it computes (a
    layer written in Python ops is slower than a fused kernel of the same normalizer)."""
    from .cost import SHAPE

    rows = []
    if cost is None or cost.empty:
        return rows
    for (device, dtype), c in cost.groupby(["device", "dtype"], sort=False):
        where = f"{'CPU' if device == 'cpu' else 'GPU'}, {dtype}"
        bn = c[c.norm == "bn"]
        for column, what, absolute in (
                ("seconds", f"forward + backward time of one layer on {'×'.join(map(str, SHAPE))}, relative to BN "
                            f"({where})", f"BN {1e6 * bn.seconds.median():.0f} µs"),
                ("peak_bytes", f"peak memory of that forward + backward, relative to BN ({where})",
                 f"BN {bn.peak_bytes.median() / 2 ** 20:.2f} MiB")):
            rel = _relative(c, column)
            ms = Measure(f"{what}; {absolute}", f"{'time' if column == 'seconds' else 'memory'} ({device})",
                         lambda s, m, rel=rel: rel, "lower", math.log10(1.25), "", keys=("round",), show=_ratio,
                         trains=False, judged=False)
            runs = c.assign(lr=np.nan, batch_size=0, seed=c["round"], diverged=False)
            rows.append({**grade(ms, View(ONE, runs, c.head(0), {}), norm, baselines), "axis": COST_AXIS,
                         "study": None, "counts": True, "reads": {}})
    return rows


# -- properties ---------------------------------------------------------------------------------------


def property_table(props: pd.DataFrame | None, norms: list[str]) -> pd.DataFrame:
    if props is None or props.empty:
        return pd.DataFrame(columns=["property", *norms, "rule"])
    p = props.assign(cell=props.apply(Pr.cell, axis=1))
    t = p.pivot(index="property", columns="norm", values="cell").reindex(columns=norms)
    order = [q.name for q in Pr.PROPERTIES]
    t = t.reindex([o for o in order if o in t.index])
    rules = p.drop_duplicates("property").set_index("property").rule
    return t.assign(rule=rules.reindex(t.index)).reset_index().fillna("–")


# -- the card -------------------------------------------------------------------------------------------


def axis_line(rows: list[dict], baselines: list[str]) -> str:
    """One line per axis: per baseline the verdict its counted measures agree on, else 'mixed' with each."""
    if not any(r["judged"] for r in rows):
        return "shown beside the baselines, not graded"
    by: dict[str, list[str]] = {}
    for b in baselines:
        vs = [(r["verdicts"][b], r["short"]) for r in rows if r["judged"] and r.get("counts", True)]
        measured = [(w, s) for w, s in vs if w != NOT_MEASURED]
        v = (NOT_MEASURED if not measured else measured[0][0] if len({w for w, _ in measured}) == 1
             else "mixed (" + "; ".join(f"{w}: {s}" for w, s in measured) + ")")
        by.setdefault(v, []).append(b)
    return "; ".join(f"{WORDS.get(v, v + ' against')} {', '.join(bs)}" for v, bs in by.items())


def build(norm: str, baselines: list[str], data: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
          arms_info: dict | None = None, props: pd.DataFrame | None = None, cost: pd.DataFrame | None = None) -> dict:
    """``data``: study -> (summary, metrics) of its arm's runs; ``arms_info``: study -> the arm's
    reading (shared lr, choosing seeds).  Every declared arm graded; an arm the tier lacks is 'not
    measured'."""
    arms_info = arms_info or {}
    rows, setting = [], {}
    for study, arm in arms():
        if study not in data:
            skipped = arms_info.get(study, {}).get("skipped", {}).get(norm)
            why = f"{norm}: {skipped}" if skipped else "this tier's config has no such study"
            rows += absent_rows(arm, norm, baselines, why)
            setting[arm.axis] = "not run" + ("" if skipped else " in this config")
            continue
        s, m = data[study]
        rows += arm_rows(study, arm, s, m, arms_info.get(study), norm, baselines)
        setting[arm.axis] = f"{nets(s)}; {tuning_text(arm, arms_info.get(study))}"
    cost_part = cost_rows(cost, norm, baselines)
    rows += cost_part
    if cost_part:
        devs = sorted(set(cost.device))
        setting[COST_AXIS] = (f"{len(set(cost['round']))} alternating rounds on {', '.join(devs)}, each layer "
                              f"alone on one thread" + ("" if "cuda" in devs else "; no GPU on the machine that "
                                                                                  "ran the card"))
    axes: dict[str, list[dict]] = {}
    for r in rows:
        axes.setdefault(r["axis"], []).append(r)
    return {"norm": norm, "baselines": baselines, "rows": rows, "setting": setting,
            "properties": property_table(props, [norm, *baselines]),
            "summary": {a: axis_line(rs, baselines) for a, rs in axes.items()}}


def unrunnable(norm: str, baselines: list[str], props: pd.DataFrame, why: str) -> dict:
    """The card of a normalizer that no arm can train (its forward raises on an ordinary batch, say):
    its properties, and every axis not measured, with ``why``."""
    rows = [r for _, arm in arms() for r in absent_rows(arm, norm, baselines, why)]
    return {"norm": norm, "baselines": baselines, "rows": rows, "setting": {},
            "properties": property_table(props, [norm]),
            "summary": {r["axis"]: f"not measured ({why})" for r in rows}}


def nets(s: pd.DataFrame) -> str:
    """The setting of an arm's runs, per net it trains."""
    return "; ".join(_runs(describe(g)) for _, g in s.groupby("model", sort=False))


def _runs(text: str) -> str:
    """A layer list of one width repeated (a 100-layer net) written as [8] × 100."""
    return re.sub(r"\[(\d+)(?:, \1\b)+\]", lambda m: f"[{m.group(1)}] × {m.group(0).count(',') + 1}", text)


def read(studies: dict[str, tuple[list[str], list[str]]]) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """study -> (its arm's run summary files, metrics files) -> study -> (summary, metrics)."""
    return {st: (read_runs(s, SUMMARY_SCHEMA).to_pandas(), read_runs(m, METRICS_SCHEMA).to_pandas())
            for st, (s, m) in studies.items()}


def topup(card: dict) -> pd.DataFrame:
    """The hook for adding seeds to undecided verdicts (as the claims do): per undecided verdict, the
    runs its cells read -- the study, the norm, and the (lr, batch size) settings with the seeds
    already read.  More seeds of exactly these settings are what would decide it."""
    out = []
    for r in card["rows"]:
        if not r.get("study"):
            continue
        for b, v in r["verdicts"].items():
            if v != UNDECIDED:
                continue
            for n in (card["norm"], b):
                for (lr, bs), g in pd.DataFrame(r["reads"].get(n, [])).groupby(["lr", "batch_size"]):
                    out.append({"study": r["study"], "measure": r["measure"], "view": r["view"], "against": b,
                                "norm": n, "lr": lr, "batch_size": int(bs), "seeds": sorted(map(int, g.seed))})
    cols = ["study", "measure", "view", "against", "norm", "lr", "batch_size", "seeds"]
    return pd.DataFrame(out, columns=cols).drop_duplicates(subset=cols[:7]) if out else pd.DataFrame(columns=cols)


def plan_topup(study: str, s: pd.DataFrame, m: pd.DataFrame, evaluate: dict, max_seeds: int) -> dict:
    """The adaptive stage for a card's arm (``normbench.topup``, as the claims get it): every verdict the
    page states -- a card's NORM against each baseline, the leaderboard's every normalizer against BN; at
    the best lr where the arm sweeps, not the shared-lr view shown beside it -- graded on the arm's base
    runs; one left undecided whose plan asks for at most twice ``max_seeds`` gets new seeds for the runs
    its two cells read (``topup`` hook), nothing else.  Same decision file as a study's."""
    from .topup import KEY, seeds_to_add

    arm = dict(arms())[study]
    info = (evaluate.get("arms") or {}).get(study)
    against = evaluate["baselines"] if evaluate.get("page") != "leaderboard" else ["bn"]
    start = int(s.seed.max()) + 1 if len(s) else 0
    claims, want, memo = {}, {}, {}  # want: (norm, lr, batch size) -> seeds to add
    for norm in evaluate["norms"]:
        rows = arm_rows(study, arm, s, m, info, norm, [b for b in against if b != norm], memo=memo)
        for r in rows:
            for b, word in r["verdicts"].items():
                if word != UNDECIDED or b not in r["evidence"] or not r["counts"]:  # counts: the axis's verdict
                    continue
                ev = r["evidence"][b]
                k = seeds_to_add(ev.needed, ev.seed_count, max_seeds, ev.planned)  # the lr arm: 2 values a seed
                claims[f"{norm} vs {b}: {r['measure']} ({r['view']})"] = {
                    "verdict": word, "n": int(ev.seed_count), "needed": ev.needed, "planned": ev.planned,
                    "added": list(range(start, start + k))}
                for n in (norm, b):
                    for read in r["reads"].get(n, []):
                        key = (n, read["lr"], int(read["batch_size"]))
                        want[key] = max(want.get(key, 0), k)
    runs = []
    for (n, lr, bs), k in want.items():
        base = s[(s.norm == n) & (s.lr == lr) & (s.batch_size == bs)][KEY].drop_duplicates()
        runs += [{**r, "seed": seed} for r in base.to_dict("records") for seed in range(start, start + k)]
    table = pd.DataFrame(runs, columns=KEY + ["seed"]).drop_duplicates()
    return {"study": study, "max_seeds": max_seeds, "claims": claims,
            "runs": [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in table.to_dict("records")]}


def _with_lr(r: dict, n: str) -> str:
    cell = r["cells"].get(n, "–")
    lr = r["lrs"].get(n) if r["view"] in (BEST, SHARED) else None
    return f"{cell} ({lr})" if lr and cell != "–" else cell


def table(card: dict) -> pd.DataFrame:
    """One row per property and per graded measure: the norm's cell, each baseline's, the verdicts."""
    norm, bl = card["norm"], card["baselines"]
    out = []
    for _, p in card["properties"].iterrows():
        out.append({"axis": PROPERTIES_AXIS, "measure": p["property"], "view": "", norm: p.get(norm, "–"),
                    **{b: p.get(b, "–") for b in bl}, **{f"vs {b}": "" for b in bl}, "same within": p["rule"]})
    for r in card["rows"]:
        out.append({"axis": r["axis"], "measure": r["measure"], "view": r["view"], norm: _with_lr(r, norm),
                    **{b: _with_lr(r, b) for b in bl}, **{f"vs {b}": r["verdicts"].get(b, "") for b in bl},
                    "same within": r["margin"]})
    return pd.DataFrame(out, columns=["axis", "measure", "view", norm, *bl, *[f"vs {b}" for b in bl],
                                      "same within"])


RULES = ("A verdict is *same* if the interval of the paired difference lies inside ± the margin, *better* / "
         "*worse* if it lies wholly beyond +margin / −margin (by more than the margin), else *undecided*; "
         "*not measured* where the runs cannot be read (why is listed below). At each normalizer's best lr "
         "the lr is chosen on some seeds and measured on the others (no winner's curse), and *better* must "
         "hold against the baseline at every lr of its sweep (*worse*: against every lr of the normalizer's).")


def write(card: dict, out_dir: str | Path) -> None:
    """README.md (the card), card.csv (its table) and card.html (for the Snakemake report)."""
    out, norm = Path(out_dir), card["norm"]
    t = table(card)
    props = card["properties"]
    lines = [f"# Report card: {norm}", "",
             f"`{norm}` beside the baselines {', '.join(card['baselines'])}: its properties first (measured in "
             f"seconds, no training), then each axis ({A.INTERVAL}, paired by seed; cost: by alternating round). "
             + RULES, "", "## Properties", "",
             props.to_markdown(index=False) if len(props) else "not measured", "", "## Verdicts", ""]
    lines += [f"- **{a}**: " + (line if line.startswith("shown") else f"{norm} is {line}") + "."
              for a, line in card["summary"].items()]
    measures = t[t.axis != PROPERTIES_AXIS]
    lines += ["", "## Measures", "", measures.to_markdown(index=False), "", "[CSV](card.csv)", "",
              "## Setting", ""]
    lines += [f"- {axis}: {text}" for axis, text in card.get("setting", {}).items()]
    why = []
    for r in card["rows"]:
        by: dict[str, list[str]] = {}
        for b, w in r.get("why", {}).items():
            by.setdefault(w, []).append(b)
        why += [f"- {r['axis']}, {r['measure']}" + (f" ({r['view']})" if r["view"] else "") + f" vs {', '.join(bs)}: {w}"
                for w, bs in by.items()]
    if why:
        lines += ["", "## Not measured, and why", "", *why]
    lines += ["", "## Evidence", ""]
    for r in card["rows"]:
        for ev in r["evidence"].values():
            lines.append(f"- {ev.measured}" + (f" — {ev.note}" if ev.note else ""))
    lines += ["", "Runs that diverged count at chance accuracy. Cost is measured on the machine that wrote the card, "
              "one thread, each layer alone, and shown, not graded: it measures this implementation, not the "
              "function it computes."]
    write_text(t.to_csv(index=False), out / "card.csv")
    write_text(_html_table(t, f"Report card of {norm}: " + "; ".join(f"{a}: {line}" for a, line in
                                                                   card["summary"].items())), out / "card.html")
    write_text("\n".join(lines) + "\n", out / "README.md")
