"""A paper's claims as predicates over a study's data, each evaluated into
reproduced / not reproduced / inconclusive with intervals over seeds.

A study declares its claims (``Claim``: the statement, the paper and figure it
comes from, and a check over the study's summary and metrics).  A check returns
``Evidence``: the verdict, the numbers measured (an estimate with its t-interval
and the seed count) and, where the claim does not reproduce or the interval
cannot decide, what was measured that says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import pyarrow as pa

from scipy import stats as sps

from .analysis import t_interval

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


@dataclass
class Evidence:
    verdict: str
    measured: str  # what was measured, in one sentence with its numbers
    estimate: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0
    note: str = ""  # why it is not reproduced or inconclusive (measured), or a caveat


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    source: str  # paper, figure/table
    check: Callable[[pd.DataFrame, pd.DataFrame], Evidence]


CLAIMS_SCHEMA = pa.schema([
    ("study", pa.string()), ("claim", pa.string()), ("statement", pa.string()), ("source", pa.string()),
    ("verdict", pa.string()), ("measured", pa.string()), ("estimate", pa.float64()), ("lo", pa.float64()),
    ("hi", pa.float64()), ("n", pa.int64()), ("note", pa.string()),
])


def _interval(values, fmt: str) -> tuple[float, float, float, int, str]:
    vals = [float(v) for v in values if math.isfinite(float(v))]
    mean, lo, hi = t_interval(vals)
    text = f"{mean:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if math.isfinite(lo) else f"{mean:{fmt}}"
    return mean, lo, hi, len(vals), text


def seeds_needed(mean: float, lo: float, hi: float, n: int, distance: float) -> int | None:
    """Seeds at which an interval of this spread would clear ``distance`` (from its mean to the
    bound it must clear): the measured reason an interval is inconclusive, in seeds."""
    if n < 2 or not math.isfinite(lo) or distance <= 0:
        return None
    sd = (hi - lo) / 2 / float(sps.t.ppf(0.975, n - 1)) * math.sqrt(n)
    for k in range(n + 1, 10_000):
        if float(sps.t.ppf(0.975, k - 1)) * sd / math.sqrt(k) < distance:
            return k
    return None


def _undecided(margin: float, mean, lo, hi, n, what: str) -> str:
    k = seeds_needed(mean, lo, hi, n, abs(mean - margin))
    return what + (f"; at the measured seed-to-seed spread about {k} seeds would decide it" if k else
                   "; the mean sits on the bound: more seeds would not decide it")


def greater(diffs, what: str, fmt: str = ".3g", margin: float = 0.0, min_n: int = 3) -> Evidence:
    """``diffs`` are paired per-seed differences A − B; the claim is A > B (+ margin).
    Reproduced if the t-interval lies above the margin, not reproduced if below it."""
    mean, lo, hi, n, text = _interval(diffs, fmt)
    measured = f"{what}: {text} over {n} seed pairs (t 95% interval)"
    if n < min_n:
        return Evidence(INCONCLUSIVE, measured, mean, lo, hi, n, f"only {n} paired seeds (need {min_n})")
    if lo > margin:
        return Evidence(REPRODUCED, measured, mean, lo, hi, n)
    if hi < margin:
        return Evidence(NOT_REPRODUCED, measured, mean, lo, hi, n)
    return Evidence(INCONCLUSIVE, measured, mean, lo, hi, n,
                    _undecided(margin, mean, lo, hi, n, f"the interval includes {margin:g}"))


def at_most(diffs, margin: float, what: str, fmt: str = ".3g", min_n: int = 3) -> Evidence:
    """The claim is A ≤ B + margin (non-inferiority, e.g. "does not rise by more than the margin"):
    reproduced if the interval of A − B lies below the margin, not reproduced if above it."""
    mean, lo, hi, n, text = _interval(diffs, fmt)
    measured = f"{what}: {text} over {n} seed pairs; claim: below {margin:g} (t 95% interval)"
    if n < min_n:
        return Evidence(INCONCLUSIVE, measured, mean, lo, hi, n, f"only {n} paired seeds (need {min_n})")
    if hi < margin:
        return Evidence(REPRODUCED, measured, mean, lo, hi, n)
    if lo > margin:
        return Evidence(NOT_REPRODUCED, measured, mean, lo, hi, n)
    return Evidence(INCONCLUSIVE, measured, mean, lo, hi, n,
                    _undecided(margin, mean, lo, hi, n, f"the interval includes {margin:g}"))


def within(diffs, margin: float, what: str, fmt: str = ".3g", min_n: int = 3) -> Evidence:
    """The claim is A ≈ B: reproduced if the interval of A − B lies inside ±margin, not
    reproduced if it lies wholly outside it (an equivalence test)."""
    mean, lo, hi, n, text = _interval(diffs, fmt)
    measured = f"{what}: {text} over {n} seed pairs; equivalence margin ±{margin:g}"
    if n < min_n:
        return Evidence(INCONCLUSIVE, measured, mean, lo, hi, n, f"only {n} paired seeds (need {min_n})")
    if -margin < lo and hi < margin:
        return Evidence(REPRODUCED, measured, mean, lo, hi, n)
    if lo > margin or hi < -margin:
        return Evidence(NOT_REPRODUCED, measured, mean, lo, hi, n)
    edge = margin if mean >= 0 else -margin
    return Evidence(INCONCLUSIVE, measured, mean, lo, hi, n,
                    _undecided(edge, mean, lo, hi, n, "the interval crosses the margin"))


def exact(holds: bool, measured: str, estimate: float = math.nan) -> Evidence:
    """A deterministic fact (no seed variation: the same data and computation for every seed)."""
    return Evidence(REPRODUCED if holds else NOT_REPRODUCED, measured + " (deterministic)", estimate, estimate,
                    estimate, 1)


def every(parts: list[Evidence], joiner: str = "; ") -> Evidence:
    """A claim that holds only if each part does (e.g. at every learning rate)."""
    if not parts:
        return Evidence(INCONCLUSIVE, "no runs to test it on", note="the study has no runs for this claim")
    verdicts = {p.verdict for p in parts}
    verdict = (NOT_REPRODUCED if NOT_REPRODUCED in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts
               else REPRODUCED)
    worst = min(parts, key=lambda p: (p.lo if math.isfinite(p.lo) else math.inf))
    notes = joiner.join(p.note for p in parts if p.note)
    return Evidence(verdict, joiner.join(p.measured for p in parts), worst.estimate, worst.lo, worst.hi,
                    min(p.n for p in parts), notes)


def evaluate(study: str, claims, summary: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for c in claims:
        try:
            ev = c.check(summary, metrics)
        except (KeyError, ValueError, IndexError) as e:  # data the claim needs is absent: say so, never hide it
            ev = Evidence(INCONCLUSIVE, "not measurable on this study's runs", note=f"{type(e).__name__}: {e}")
        rows.append({"study": study, "claim": c.id, "statement": c.statement, "source": c.source,
                     "verdict": ev.verdict, "measured": ev.measured, "estimate": ev.estimate, "lo": ev.lo,
                     "hi": ev.hi, "n": ev.n, "note": ev.note})
    return pd.DataFrame(rows, columns=CLAIMS_SCHEMA.names)
