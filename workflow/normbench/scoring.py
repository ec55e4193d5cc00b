"""What a study contributes to the report card of ``normbench evaluate`` (as AlgoPerf's workloads
carry their own scoring): an arm -- a block of the study's runs with the normalizer under test
beside the baselines -- and the measures read from it, each graded against each baseline.

A study module declares ``Study(card=CardArm(...))``; ``normbench.evaluate`` builds the arms,
``normbench.card`` and ``normbench.leaderboard`` grade them, and none of them names a study.

The verdict rules (``claims.within`` / ``claims.greater`` on paired per-seed differences, signed so
that positive is better):

* **same**: the interval of the difference lies inside ± the measure's margin;
* **better** / **worse**: it lies wholly beyond +margin / −margin (better or worse *by more than
  the margin*: a difference inside the margin is never called better or worse);
* **undecided**: neither; **not measured**: the runs cannot be read (a baseline that did not train
  where the reading needs it, or no baseline trained at all: the measure would measure nothing).

Each normalizer at its own best lr (``Tune``): the first ``select`` seeds choose each normalizer's lr
(by the same rule for the normalizer and the baselines), the other seeds measure it -- a value read
on the seeds that chose it is biased upwards (the winner's curse), one read on fresh seeds is not.
*Better* at the best lr must hold against the baseline at *every* lr of its sweep (an
intersection-union test: a re-implementation of a baseline cannot be called better because the
baseline's selection picked a worse lr by chance); *worse* likewise against every lr of the
normalizer's own sweep.  The shared-lr view (the study's lr for every normalizer, every seed) is
graded beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from . import analysis as A
from .claims import REPRODUCED, Evidence, greater, within

BASELINES = ("bn", "gn", "ln", "none")  # beside every normalizer in every arm
BETTER, SAME, WORSE, UNDECIDED, NOT_MEASURED = "better", "same", "worse", "undecided", "not measured"
BEST, SHARED, ONE = "best lr", "shared lr", ""  # the views of a measure


def _g(v: float) -> str:
    return f"{v:.3g}"


def chance_value(s: pd.DataFrame, value: pd.Series) -> pd.Series:
    """``value`` (an accuracy) with a diverged run counted at chance."""
    return value.where(~s.diverged.astype(bool), s.chance_acc)


def final_acc(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """Final test accuracy per run (a diverged run at chance)."""
    return s.assign(value=chance_value(s, s.final_test_acc))[["norm", "batch_size", "lr", "seed", "value"]]


def final_error(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """Final test error (%) per run (a diverged run at chance)."""
    d = final_acc(s, m)
    return d.assign(value=100 * (1 - d.value))


def did_not_train(s: pd.DataFrame) -> dict[str, str]:
    """norm -> why, for a norm every run of which diverged or ended at chance."""
    out = {}
    for norm, g in s.groupby("norm"):
        if len(g) and A.failed(g).all():
            out[norm] = f"every run of {norm} here diverged or ended at chance ({len(g)} runs)"
    return out


@dataclass(frozen=True)
class Measure:
    name: str  # what it measures, with its unit
    short: str  # its name in an axis line and on the leaderboard
    values: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]  # (summary, metrics) -> norm, *keys, value
    better: str  # "higher" | "lower"
    margin: float  # "same" inside ± this; better/worse only beyond it
    margin_text: str
    keys: tuple = ("seed",)  # what pairs NORM's value with a baseline's
    show: Callable[[float], str] = _g
    judged: bool = True  # False: shown beside, no verdict
    tuned: bool = True  # read at each normalizer's best lr (where the arm has a sweep); False: at the shared lr
    beside: bool = True  # a tuned measure also shown at the shared lr (False: only where each is at its best)
    # norm -> why its runs cannot be read by this measure ('' or absent: they can); None: every run can
    untrained: Callable[[pd.DataFrame, pd.DataFrame], dict[str, str]] | None = None
    cell: Callable[[pd.DataFrame], str] | None = None  # a norm's cell, if not 'mean [t interval]'
    runs: Callable[[pd.DataFrame], pd.Series] | None = None  # which of the arm's runs it reads (a row mask)
    trains: bool = True  # read after training: refused where no baseline trained (False: at initialization)

    @property
    def sign(self) -> float:
        return 1.0 if self.better == "higher" else -1.0


@dataclass(frozen=True)
class Tune:
    """A small lr sweep around the study's shared lr, and how a normalizer's best lr is chosen on it."""

    factors: tuple  # × the study's shared lr (1 must be among them: the shared-lr view)
    score: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]  # per run: norm, lr, batch_size, seed, value
    better: str  # of the score: "higher" | "lower"
    select: int = 2  # the first seeds of the arm choose the lr, the rest measure it
    group: tuple = ()  # columns chosen separately (batch_size: an lr per batch size)
    # a run's lr setting (a base lr under a scaling rule), given the arm's ``card`` info
    setting: Callable[[pd.DataFrame, dict], pd.Series] = lambda d, info: d.lr
    what: str = "lr"  # how the setting is named in a cell


@dataclass(frozen=True)
class CardArm:
    """A study's arm of the card: ``build(block, config)`` derives the arm's config block (grid without
    norms, train settings, pack; ``models`` to add; ``card``, what the card must know to read it, with
    ``shared_lr``, the lr setting every normalizer shares where the arm sweeps) from the study's block
    in a tier's config; ``trim`` cuts the embedded default's to a few minutes (``seeds``: at most this
    many, ``train``: settings)."""

    axis: str
    build: Callable[[dict, dict], dict]
    measures: tuple
    order: int = 50  # where the axis stands on the card
    tune: Tune | None = None
    one_lr: str = ""  # why the arm has no sweep (said on the card)
    trim: dict = field(default_factory=dict)


def grids(block: dict) -> list[dict]:
    """A study block's grids (one, or a list)."""
    return block["grid"] if isinstance(block["grid"], list) else [block["grid"]]


def train_of(block: dict, grid: dict) -> dict:
    """The train settings of one of a block's grids (the block's, then the grid's own)."""
    return {**(block.get("train") or {}), **(grid.get("train") or {})}


# -- verdicts ---------------------------------------------------------------------------------------


def _pairs(a: pd.DataFrame, b: pd.DataFrame, keys) -> pd.Series:
    keys = list(keys)
    return (a.set_index(keys).value - b.set_index(keys).value).dropna()


def verdict(diffs, margin: float, what: str, fmt: str = ".3g") -> tuple[str, Evidence]:
    """``diffs``: paired differences NORM − baseline, signed so that positive is better."""
    diffs = pd.Series(diffs, dtype=float)
    same = within(diffs, margin, what, fmt)
    if same.verdict == REPRODUCED:
        return SAME, same
    up = greater(diffs, what, fmt, margin=margin)
    if up.verdict == REPRODUCED:
        return BETTER, up
    down = greater(-diffs, f"{what} (negated)", fmt, margin=margin)
    if down.verdict == REPRODUCED:
        return WORSE, Evidence(down.verdict, up.measured, up.estimate, up.lo, up.hi, up.n, down.note)
    return UNDECIDED, same


def tuned_verdict(best: pd.Series, against_each: list[pd.Series], each_against: list[pd.Series], margin: float,
                  what: str, fmt: str = ".3g") -> tuple[str, Evidence]:
    """At each normalizer's best lr.  ``best``: NORM at its lr − baseline at its lr; ``against_each``:
    NORM at its lr − the baseline at each lr of its sweep; ``each_against``: NORM at each of its lrs −
    the baseline at its lr (all signed so that positive is better, paired on the measuring seeds)."""
    word, ev = verdict(best, margin, what, fmt)
    if word == BETTER and not all(greater(d, what, fmt, margin=margin).verdict == REPRODUCED for d in against_each):
        word, ev.note = UNDECIDED, "better than the baseline at its chosen lr, not at every lr of its sweep"
    if word == WORSE and not all(greater(-d, what, fmt, margin=margin).verdict == REPRODUCED for d in each_against):
        word, ev.note = UNDECIDED, "worse than the baseline at its chosen lr, not at every lr of its own sweep"
    return word, ev


# -- views: which runs a measure reads ----------------------------------------------------------------


@dataclass
class View:
    name: str  # BEST, SHARED or ONE
    summary: pd.DataFrame
    metrics: pd.DataFrame
    lr_text: dict[str, str]  # norm -> the lr(s) its cell used
    per_lr: dict = field(default_factory=dict)  # setting -> (summary, metrics) on the measuring seeds (BEST)


def _lr_text(s: pd.DataFrame, tune: Tune | None, info: dict) -> dict[str, str]:
    """norm -> the lr setting(s) its runs used, per ``tune.group`` where that differs."""
    out = {}
    what = tune.what if tune else "lr"
    for norm, g in s.groupby("norm"):
        g = g.assign(_set=(tune.setting(g, info) if tune else g.lr).round(12))
        groups = list(tune.group) if tune else []
        if groups and g._set.nunique() > 1 and g.groupby(groups)._set.nunique().max() == 1:
            by = groups[0].replace("batch_size", "batch")
            out[norm] = ", ".join(f"{what} {v:g} at {by} {k}" for k, v in g.groupby(groups[0])._set.first().items())
        else:
            out[norm] = f"{what} " + ", ".join(f"{v:g}" for v in sorted(g._set.unique()))
    return out


RUN_KEYS = ["norm", "lr", "batch_size", "seed"]  # a run, within an arm (model and dataset are the arm's)


def choose(tune: Tune, s: pd.DataFrame, m: pd.DataFrame, info: dict, seeds: list[int]) -> pd.DataFrame:
    """Each normalizer's lr setting (per ``tune.group``) by its mean score on the choosing ``seeds``;
    ties go to the shared lr, then to the smaller.  Columns: norm, *group, setting."""
    sel = s[s.seed.isin(seeds)]
    sc = tune.score(sel, m[m.seed.isin(seeds)]).merge(
        sel.assign(setting=tune.setting(sel, info).round(12))[[*RUN_KEYS, "setting"]], on=RUN_KEYS)
    group = ["norm", *tune.group]
    mean = sc.groupby([*group, "setting"]).value.mean().reset_index()
    sign = 1.0 if tune.better == "higher" else -1.0
    mean = mean.assign(rank=-sign * mean.value, off=np.log(mean.setting / info["shared_lr"]).abs().round(9))
    mean = mean.sort_values([*group, "rank", "off", "setting"])
    return mean.groupby(group).head(1)[[*group, "setting"]].reset_index(drop=True)


def views(arm: CardArm, s: pd.DataFrame, m: pd.DataFrame, info: dict | None) -> dict[str, View]:
    """The runs each view reads: ONE (no sweep), or BEST (each norm at its chosen lr, on the measuring
    seeds; with the same seeds at every lr of the sweep, for the verdict's every-lr test) and SHARED
    (every norm at the shared lr, every seed).  ``info``: the arm's ``card`` block (``shared_lr``,
    ``select``: the choosing seeds, and what the arm's lr setting needs)."""
    tune = arm.tune
    if tune is None or not info:
        return {ONE: View(ONE, s, m, _lr_text(s, None, {}))}
    select = list(info["select"])
    set_s, set_m = tune.setting(s, info).round(12), tune.setting(m, info).round(12)
    at_s, at_m = np.isclose(set_s, info["shared_lr"]), np.isclose(set_m, info["shared_lr"])
    out = {SHARED: View(SHARED, s[at_s], m[at_m], _lr_text(s[at_s], tune, info))}
    chosen = choose(tune, s, m, info, select)
    pick = s.assign(setting=set_s).merge(chosen, on=["norm", *tune.group, "setting"])
    pick = pick[~pick.seed.isin(select)]
    measuring_s, measuring_m = ~s.seed.isin(select), ~m.seed.isin(select)
    per_lr = {v: (s[measuring_s & np.isclose(set_s, v)], m[measuring_m & np.isclose(set_m, v)])
              for v in sorted(set(set_s))}
    out[BEST] = View(BEST, pick.drop(columns="setting"), m.merge(pick[RUN_KEYS], on=RUN_KEYS),
                     _lr_text(pick, tune, info), per_lr)
    return out


# -- grading one measure on one view -------------------------------------------------------------------


def t_cell(values: pd.Series, show) -> str:
    mean, lo, hi = A.t_interval(values)
    if not math.isfinite(mean):
        return "–"
    return show(mean) + (f" [{show(lo)}, {show(hi)}]" if math.isfinite(lo) else "")


def _reasons(measure: Measure, s: pd.DataFrame, m: pd.DataFrame, norm: str, baselines: list[str]) -> dict[str, str]:
    """norm -> why the measure cannot read it here; every norm at once when no baseline trained."""
    s = s[s.norm.isin([norm, *baselines])]
    failed = did_not_train(s)
    present = [b for b in baselines if (s.norm == b).any()]
    if measure.trains and present and all(b in failed for b in present):
        why = (f"no baseline trained in this budget ({'; '.join(failed[b] for b in present)}): the measure "
               f"cannot tell anything apart here")
        return {n: why for n in s.norm.unique()}
    return {k: v for k, v in (measure.untrained(s, m) if measure.untrained else {}).items() if v}


def _read(measure: Measure, s: pd.DataFrame, m: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (s[measure.runs(s)], m[measure.runs(m)]) if measure.runs else (s, m)


def grade(measure: Measure, view: View, norm: str, baselines: list[str], what: str = "", pool=None,
          memo: dict | None = None) -> dict:
    """One row of the card: cells (norm -> 'mean [lo, hi]'), the lr each cell used, and per baseline a
    verdict, its evidence, or why it is not measured; ``reads`` says which runs each norm's cell read
    (the hook for adding seeds to an undecided verdict).  ``pool``: the baselines whose training decides
    whether the measure measures anything here (default: ``baselines``).  ``memo``: kept across the
    calls of a page on the same view (one per normalizer): a measure's values, every norm's at once,
    are computed once."""
    memo = {} if memo is None else memo

    def values_of(key, summary, metrics):
        if key not in memo:
            memo[key] = measure.values(*_read(measure, summary, metrics))
        return memo[key]

    s, m = _read(measure, view.summary, view.metrics)
    values = values_of((id(measure), view.name), view.summary, view.metrics)
    reasons = _reasons(measure, s, m, norm, list(baselines if pool is None else pool))
    cells, reads = {}, {}
    for n in [norm, *baselines]:
        v = values[values.norm == n]
        cells[n] = (measure.cell(v) if measure.cell else t_cell(v.value, measure.show)) if len(v) else "–"
        runs = s[s.norm == n]
        reads[n] = runs[["lr", "batch_size", "seed"]].drop_duplicates().to_dict("records")
    verdicts, evidence, why = {}, {}, {}
    for b in baselines:
        if not measure.judged:
            verdicts[b] = ""
            continue
        blocked = reasons.get(norm) or reasons.get(b)
        if blocked or not (values.norm == b).any() or not (values.norm == norm).any():
            verdicts[b] = NOT_MEASURED
            why[b] = blocked or f"no runs of {norm if not (values.norm == norm).any() else b} read by this measure"
            continue
        label = f"{norm} vs {b}, {measure.name}{what} ({measure.better} is better; signed so + is better)"
        diff = lambda a, c: measure.sign * _pairs(a, c, measure.keys)  # noqa: E731
        mine, theirs = values[values.norm == norm], values[values.norm == b]
        if view.name == BEST:
            at = {v: values_of((id(measure), view.name, v), *sm) for v, sm in view.per_lr.items()}
            against = [diff(mine, d[d.norm == b]) for d in at.values() if (d.norm == b).any()]
            each = [diff(d[d.norm == norm], theirs) for d in at.values() if (d.norm == norm).any()]
            verdicts[b], evidence[b] = tuned_verdict(diff(mine, theirs), against, each, measure.margin, label)
        else:
            verdicts[b], evidence[b] = verdict(diff(mine, theirs), measure.margin, label)
    return {"measure": measure.name, "short": measure.short, "view": view.name, "judged": measure.judged,
            "cells": cells, "lrs": view.lr_text, "verdicts": verdicts, "evidence": evidence, "why": why,
            "margin": measure.margin_text, "reads": reads}
