"""A paper's claims as predicates over a study's data, each evaluated into
reproduced / not reproduced / inconclusive with intervals over seeds.

A study declares its claims (``Claim``: the statement, the paper and figure it
comes from, a check over the study's summary and metrics, and the ``arm`` -- the
runs the check reads).  A check returns ``Evidence``: the verdict, the numbers
measured (an estimate with its interval, the test that made it and the seed
count) and, where the claim does not reproduce or the interval cannot decide,
what was measured that says why, with the seeds that would decide it.

Each check names the interval that fits its per-seed values (``normbench.intervals``:
Student t for continuous values, the sign test for ordinal or censored ones, the
signed-rank test for heavy tails).  A claim may be looked at twice -- its base
seeds, then seeds added where it was undecided (``normbench.topup``) -- so the
error rate α = 5% is split between the two looks: every interval is a
``LOOK_LEVEL`` = 97.5% interval, and a verdict's chance of being false stays at
most 2.5% on each side however the second look went (a union bound over the looks;
``tests/test_topup.py`` simulates it).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from .intervals import SIGN, SPREAD_CONFIDENCE, T, Procedure

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
ALPHA, LOOKS = 0.05, 2  # the false-verdict rate, two-sided, split evenly over the looks
LOOK_LEVEL = 1 - ALPHA / LOOKS  # each look's interval
_level = [LOOK_LEVEL]  # the level the decision rules use now (``at_level``)
CLAIM_RULE = (f"each claim by the test that fits its per-seed values (named in its row), at {100 * LOOK_LEVEL:g}% per "
              f"look: α = {ALPHA:g} split over the base seeds and the seeds added where a claim was undecided")


@contextlib.contextmanager
def at_level(level: float):
    """Decide the claims checked inside at another interval level (a single look, a test)."""
    _level.append(level)
    try:
        yield
    finally:
        _level.pop()


def level() -> float:
    return _level[-1]


@dataclass
class Evidence:
    verdict: str
    measured: str  # what was measured, in one sentence with its numbers
    estimate: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0  # the values read (a seed gives several where they are per lr or per batch size)
    note: str = ""  # why it is not reproduced or inconclusive (measured), or a caveat
    test: str = ""  # the procedure that made the interval (``intervals.Procedure.name``), "deterministic"
    needed: int | None = None  # seeds at which the interval would decide it (undecided claims)
    planned: int | None = None  # seeds the adaptive stage gives it: the plan at the spread's upper limit
    seeds: int | None = None  # the seeds the n values come from (None: one value per seed)

    @property
    def seed_count(self) -> int:
        """The seeds its values come from (what a seed plan and the cap count)."""
        return self.n if self.seeds is None else self.seeds


def _all_rows(s: pd.DataFrame) -> pd.Series:
    return pd.Series(True, index=s.index)


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    source: str  # paper, figure/table
    check: Callable[[pd.DataFrame, pd.DataFrame], Evidence]
    # the summary rows the check reads: where the claim is undecided, these runs get more seeds
    arm: Callable[[pd.DataFrame], pd.Series] = field(default=_all_rows)


CLAIMS_SCHEMA = pa.schema([
    ("study", pa.string()), ("claim", pa.string()), ("statement", pa.string()), ("source", pa.string()),
    ("verdict", pa.string()), ("measured", pa.string()), ("estimate", pa.float64()), ("lo", pa.float64()),
    ("hi", pa.float64()), ("n", pa.int64()), ("note", pa.string()),
    ("test", pa.string()), ("level", pa.float64()),  # the interval's procedure and level
    ("runs", pa.int64()),  # runs of the claim's arm it was checked on
    ("seeds", pa.int64()), ("seeds_added", pa.int64()),  # its arm's base seeds + its own added; of them, added
    ("look", pa.int64()),  # 1: decided on the base seeds; 2: after seeds were added
    ("needed", pa.int64()),  # seeds that would decide an undecided claim (null: none would, or decided)
    ("planned", pa.int64()),  # seeds planned for it at the spread's upper confidence limit (null: beyond any plan)
])


def _kept(values, test: Procedure) -> tuple[np.ndarray, int]:
    """The values a test reads (NaN dropped; ±inf too unless it reads them by rank) and the seeds they come
    from: fewer than the values where each seed gives several (a value per lr, or per batch size)."""
    x = np.asarray([float(v) for v in values], dtype=float)
    keep = ~np.isnan(x) if test.censored_ok else np.isfinite(x)
    names = list(getattr(getattr(values, "index", None), "names", None) or [])
    seeds = values.index.get_level_values("seed")[keep].nunique() if "seed" in names and len(names) > 1 else keep.sum()
    return x[keep], int(seeds)


def _interval(x: np.ndarray, fmt: str, test: Procedure, bound: float | None = None) -> tuple[float, float, float, str]:
    est, lo, hi = test.interval(x, level(), bound)
    num = lambda v: f"{v:{fmt}}" if math.isfinite(v) else ("∞" if v > 0 else "−∞")  # noqa: E731
    text = f"{num(est)} [{num(lo)}, {num(hi)}]" if not math.isnan(lo) else f"{num(est)}"
    return est, lo, hi, text


def _label(test: Procedure) -> str:
    return test.describe(level())


def _undecided(x: np.ndarray, seeds: int, bound: float, test: Procedure, what: str
               ) -> tuple[str, int | None, int | None]:
    """Why it is undecided, the seeds that would decide it at the measured spread, and the seeds planned
    for it (at the spread's upper confidence limit: the base seeds measure it loosely).  ``x``: the
    values read, from ``seeds`` seeds; a plan counts values, and where each seed gives several, the seeds
    are that many fewer."""
    per_seed = len(x) / max(seeds, 1)
    k = _seeds(test.plan(x, bound, level()), per_seed)
    planned = _seeds(test.plan(x, bound, level(), spread_confidence=SPREAD_CONFIDENCE), per_seed) if k else None
    return what + (f"; at the measured seed-to-seed spread about {k} seeds would decide it" if k else
                   "; the estimate sits on the bound: more seeds would not decide it"), k, planned


def _seeds(values_needed: int | None, per_seed: float) -> int | None:
    return math.ceil(values_needed / per_seed - 1e-9) if values_needed else values_needed


def _decide(values, what: str, fmt: str, test: Procedure, min_n: int, claim: str,
            rule: Callable[[float, float], str | None], bound: Callable[[float], float], ties: float | None = None
            ) -> Evidence:
    """The interval of ``values`` judged by ``rule(lo, hi)`` (a verdict, or None: undecided);
    ``bound(estimate)`` is the edge an undecided interval must clear (for its seed plan); ``ties``: the one
    bound of a one-sided rule (a sign test leaves out the seeds tied with it)."""
    x, seeds = _kept(values, test)
    n = len(x)
    est, lo, hi, text = _interval(x, fmt, test, ties)
    over = f"{n} seeds" if seeds == n else f"{n} ({', '.join(values.index.names)}) pairs from {seeds} seeds"
    measured = f"{what}: {text} over {over}{claim} ({_label(test)})"
    ev = Evidence(INCONCLUSIVE, measured, est, lo, hi, n, test=test.name, seeds=seeds)
    if n < min_n:
        ev.note = f"only {n} paired {'seeds' if seeds == n else 'values'} (need {min_n})"
        ev.needed = ev.planned = _seeds(min_n, n / seeds) if seeds else min_n
        return ev
    verdict = rule(lo, hi) if not (math.isnan(lo) or math.isnan(hi)) else None
    if verdict:
        ev.verdict = verdict
        return ev
    edge = bound(est)
    ev.note, ev.needed, ev.planned = _undecided(x, seeds, edge, test, f"the interval includes {edge:g}")
    return ev


def greater(diffs, what: str, fmt: str = ".3g", margin: float = 0.0, min_n: int = 3, test: Procedure = T
            ) -> Evidence:
    """``diffs`` are paired per-seed differences A − B; the claim is A > B (+ margin).
    Reproduced if the interval lies above the margin, not reproduced if below it."""
    return _decide(diffs, what, fmt, test, min_n, f"; claim: above {margin:g}" if margin else "",
                   lambda lo, hi: REPRODUCED if lo > margin else NOT_REPRODUCED if hi < margin else None,
                   lambda est: margin, margin)


def at_most(diffs, margin: float, what: str, fmt: str = ".3g", min_n: int = 3, test: Procedure = T) -> Evidence:
    """The claim is A ≤ B + margin (non-inferiority, e.g. "does not rise by more than the margin"):
    reproduced if the interval of A − B lies below the margin, not reproduced if above it."""
    return _decide(diffs, what, fmt, test, min_n, f"; claim: below {margin:g}",
                   lambda lo, hi: REPRODUCED if hi < margin else NOT_REPRODUCED if lo > margin else None,
                   lambda est: margin, margin)


def inside(values, lo_bound: float, hi_bound: float, what: str, fmt: str = ".3g", min_n: int = 3,
           test: Procedure = T) -> Evidence:
    """The claim is lo_bound ≤ value ≤ hi_bound: reproduced if the interval lies inside the bounds,
    not reproduced if it lies wholly outside them."""
    def rule(lo, hi):
        if lo_bound <= lo and hi <= hi_bound:
            return REPRODUCED
        return NOT_REPRODUCED if hi < lo_bound or lo > hi_bound else None

    def edge(est):
        if est < lo_bound or est > hi_bound:
            return lo_bound if est < lo_bound else hi_bound
        return lo_bound if est - lo_bound < hi_bound - est else hi_bound

    return _decide(values, what, fmt, test, min_n, f"; claim: inside [{lo_bound:g}, {hi_bound:g}]", rule, edge)


def within(diffs, margin: float, what: str, fmt: str = ".3g", min_n: int = 3, test: Procedure = T) -> Evidence:
    """The claim is A ≈ B: reproduced if the interval of A − B lies inside ±margin, not
    reproduced if it lies wholly outside it (an equivalence test)."""
    return inside(diffs, -margin, margin, what, fmt, min_n, test)


def exact(holds: bool, measured: str, estimate: float = math.nan) -> Evidence:
    """A deterministic fact (no seed variation: the same data and computation for every seed)."""
    return Evidence(REPRODUCED if holds else NOT_REPRODUCED, measured + " (deterministic)", estimate, estimate,
                    estimate, 1, test="deterministic")


def every(parts: list[Evidence], joiner: str = "; ") -> Evidence:
    """A claim that holds only if each part does (e.g. at every learning rate)."""
    if not parts:
        return Evidence(INCONCLUSIVE, "no runs to test it on", note="the study has no runs for this claim")
    verdicts = {p.verdict for p in parts}
    verdict = (NOT_REPRODUCED if NOT_REPRODUCED in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts
               else REPRODUCED)
    worst = min(parts, key=lambda p: (p.lo if not math.isnan(p.lo) else math.inf))
    notes = joiner.join(p.note for p in parts if p.note)
    tests = " / ".join(dict.fromkeys(p.test for p in parts if p.test))
    # seeds that would decide it: every undecided part must be decided (none if a part would never be)
    open_ = [p for p in parts if p.verdict == INCONCLUSIVE]
    decidable = open_ and all(p.needed for p in open_) and verdict == INCONCLUSIVE
    needed = max(p.needed for p in open_) if decidable else None
    planned = max(p.planned for p in open_) if decidable and all(p.planned for p in open_) else None
    return Evidence(verdict, joiner.join(p.measured for p in parts), worst.estimate, worst.lo, worst.hi,
                    min(p.n for p in parts), notes, tests, needed, planned,
                    min(p.seed_count for p in parts))


def evaluate(study: str, claims, summary: pd.DataFrame, metrics: pd.DataFrame, looks: dict | None = None
             ) -> pd.DataFrame:
    """Every claim checked on the runs given.  ``looks``: claim id -> what the adaptive stage did for it
    (``topup.Look``: the base runs it is decided on, or that it is decided on every run after seeds were
    added); without it every claim is checked on every run given, as a first look."""
    rows = []
    for c in claims:
        look = (looks or {}).get(c.id)
        s, m = (summary, metrics) if look is None else look.runs(summary, metrics)
        try:
            arm = c.arm(s).reindex(s.index, fill_value=False).astype(bool)  # the rows of s it reads
            ev = c.check(s, m)
        except (KeyError, ValueError, IndexError) as e:  # data the claim needs is absent: say so, never hide it
            ev = Evidence(INCONCLUSIVE, "not measurable on this study's runs", note=f"{type(e).__name__}: {e}")
            arm = pd.Series(False, index=s.index)
        seeds = s.seed[arm]
        if look is not None and look.topup is not None and len(look.topup):
            # its base seeds and its own added ones: not those a claim sharing its arm was given
            seeds = seeds[~seeds.isin(set(look.topup.seed) - set(look.added))]
        added = int(seeds[seeds.isin(look.added)].nunique()) if look else 0
        rows.append({"study": study, "claim": c.id, "statement": c.statement, "source": c.source,
                     "verdict": ev.verdict, "measured": ev.measured, "estimate": ev.estimate, "lo": ev.lo,
                     "hi": ev.hi, "n": ev.n, "note": ev.note, "test": ev.test or None,
                     "level": level() if ev.test not in ("", "deterministic") else None, "runs": int(arm.sum()),
                     "seeds": int(seeds.nunique()), "seeds_added": added, "look": 2 if added else 1,
                     "needed": ev.needed if ev.verdict == INCONCLUSIVE else None,
                     "planned": ev.planned if ev.verdict == INCONCLUSIVE else None})
    return pd.DataFrame(rows, columns=CLAIMS_SCHEMA.names)
