"""Intervals over seeds, one procedure per kind of per-seed value, and how many seeds would decide.

A claim's per-seed values are not all alike, and the interval must fit them:

* ``T`` -- the paired Student-t interval of the mean: continuous values, roughly symmetric
  (accuracy differences, log ratios of probes).
* ``SIGN`` -- the exact interval of the median from the sign test's order statistics: ordinal or
  censored values (a step on an lr grid, "trained at no lr", "never diverged", steps to a target
  never reached).  A censored value enters as ±inf and counts by its rank alone, so no sentinel can
  decide the interval; its coverage holds for any distribution, discrete ones included (there it
  is conservative).
* ``RANK`` -- the Wilcoxon signed-rank (Hodges-Lehmann) interval of the pseudo-median: continuous
  values with heavy tails or outlying seeds, where one seed would otherwise decide a t-interval.

``plan`` gives the seeds at which an interval would clear a bound with 80% power at the measured
spread (the adaptive stage reads it; it is planning, not inference, so the interval's level does not
depend on it).  With ``spread_confidence`` above ½ the spread planned for is its upper confidence
limit (for the sign test: the proportion's lower one), as a pilot sample's should be (Browne 1995,
Stat. Med. 14:1933): three or five seeds measure a spread loosely, and a plan at the measured one
falls short often enough that a claim stays undecided on one seed list and not another (simulated in
``tests/test_topup.py``: a claim like RMSNorm ≈ LN on 3 seeds, decided on 84% of seed lists planned at
the measured spread, on 95% planned at its upper limit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from scipy import special
from scipy import stats as sps

POWER = 0.8  # the chance a planned top-up decides the claim, at the spread measured at the first look
MAX_PLAN = 1000  # seeds beyond this are "would not decide it"
SPREAD_CONFIDENCE = 0.8  # the seeds the adaptive stage adds are planned at this upper limit of the spread


@dataclass(frozen=True)
class Procedure:
    name: str  # as a report names it
    centre: str  # what the estimate is
    # (values, level, the bound a decision compares it with) -> (estimate, lo, hi)
    interval: Callable[..., tuple[float, float, float]]
    # (values, bound, level, spread_confidence=0.5) -> seeds that would decide (0.5: at the measured spread)
    plan: Callable[..., int | None]
    censored_ok: bool = False  # whether ±inf values (censored seeds) are allowed

    def describe(self, level: float) -> str:
        return f"{self.name} ({self.centre}, {100 * level:g}% interval)"


def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x[np.isfinite(x)]


# -- Student t ---------------------------------------------------------------------------------------


def t_interval(values, level: float, bound: float | None = None) -> tuple[float, float, float]:
    """(mean, lo, hi) of the finite values; one value: no interval (NaN bounds)."""
    x = _finite(values)
    if len(x) == 0:
        return (math.nan,) * 3
    mean = float(x.mean())
    if len(x) == 1:
        return mean, math.nan, math.nan
    half = float(sps.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def _plan_normal(sd: float, distance: float, n: int, level: float, spread_confidence: float = 0.5) -> int | None:
    """Smallest n' ≥ n + 1 with (t quantile + z_power) · sd / √n' ≤ distance; sd at its upper
    ``spread_confidence`` limit from n − 1 degrees of freedom where that is above ½."""
    if n < 2 or not (distance > 0) or not math.isfinite(sd):
        return None
    if spread_confidence > 0.5:
        sd *= math.sqrt((n - 1) / sps.chi2.ppf(1 - spread_confidence, n - 1))
    if sd == 0:
        return n + 1
    k, factor = _t_factors(level)
    ok = (k > n) & (factor * sd <= distance)
    return int(k[ok.argmax()]) if ok.any() else None


@lru_cache(maxsize=None)
def _t_factors(level: float) -> tuple[np.ndarray, np.ndarray]:
    """n = 2 … MAX_PLAN and (t quantile at n − 1 + z_power) / √n: the interval's planned half-width per sd."""
    k = np.arange(2, MAX_PLAN + 1)
    return k, (sps.t.ppf(0.5 + level / 2, k - 1) + sps.norm.ppf(POWER)) / np.sqrt(k)


def t_plan(values, bound: float, level: float, spread_confidence: float = 0.5) -> int | None:
    x = _finite(values)
    return _plan_normal(float(x.std(ddof=1)) if len(x) > 1 else math.nan, abs(float(x.mean()) - bound) if len(x)
                        else math.nan, len(x), level, spread_confidence)


# -- sign test: the median of ordinal or censored values ---------------------------------------------


def _sign_rank(n, level: float):
    """The largest k with 2·P(Bin(n, ½) ≤ k − 1) ≤ 1 − level: [x_(k), x_(n−k+1)] covers the median
    with at least ``level``; 0 if no such k (too few seeds for any interval at this level).  Vectorized
    over ``n``."""
    q = (1 - level) / 2
    j = sps.binom.ppf(q, n, 0.5)  # the smallest j with P(Bin ≤ j) ≥ q: the k sought is j, or j + 1 on equality
    return (j + (sps.binom.cdf(j, n, 0.5) <= q)).astype(int)


def sign_interval(values, level: float, bound: float | None = None) -> tuple[float, float, float]:
    """(median, lo, hi): exact order-statistic interval of the median; ±inf entries (censored) allowed.
    Seeds tied with ``bound`` are left out, as the sign test leaves them out: the interval then clears
    the bound exactly when the sign test rejects it (ordinal values tie often: two nets that trained up
    to the same lr say nothing about which tolerates more)."""
    x = np.asarray(values, dtype=float)
    x = np.sort(x[~np.isnan(x) & ((x != bound) if bound is not None else True)])
    n = len(x)
    if n == 0:
        return (math.nan,) * 3
    k = int(_sign_rank(n, level))
    if k == 0:
        return float(np.median(x)), -math.inf, math.inf
    return float(np.median(x)), float(x[k - 1]), float(x[n - k])


def sign_plan(values, bound: float, level: float, spread_confidence: float = 0.5) -> int | None:
    """Seeds at which the sign test would put the median on the side of ``bound`` where most seeds
    lie, with 80% power at the measured proportion (shrunk towards ½: (k + ½)/(n + 1)), or at its
    lower ``spread_confidence`` limit (Jeffreys) where that is above ½."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x) & (x != bound)]
    n = len(x)
    if n == 0:
        return None
    above = int((x > bound).sum())
    k = max(above, n - above)
    p = sps.beta.ppf(1 - spread_confidence, k + 0.5, n - k + 0.5) if spread_confidence > 0.5 else (k + 0.5) / (n + 1)
    if p <= 0.5:
        return None
    m, crit = _sign_critical(level)
    for near in (m <= 4 * n + 50, m > 4 * n + 50):  # the near seed counts first: most plans end there
        ok = (m > n) & near
        ok[ok] = special.bdtrc(crit[ok] - 1, m[ok], p) >= POWER  # P(Bin(m, p) ≥ crit)
        if ok.any():
            return int(m[ok.argmax()])
    return None


@lru_cache(maxsize=None)
def _sign_critical(level: float) -> tuple[np.ndarray, np.ndarray]:
    """For each seed count m that can decide at all: the fewest of m seeds on one side that put the
    interval wholly on that side."""
    m = np.arange(1, MAX_PLAN + 1)
    k = _sign_rank(m, level)
    return m[k > 0], (m - k + 1)[k > 0]


# -- Wilcoxon signed rank: the Hodges-Lehmann pseudo-median -------------------------------------------


@lru_cache(maxsize=None)
def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(T⁺ ≤ t) under the null, t = 0 … n(n+1)/2 (exact, by counting subsets of 1..n)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    return np.cumsum(counts) / 2.0 ** n


def rank_interval(values, level: float, bound: float | None = None) -> tuple[float, float, float]:
    """(Hodges-Lehmann estimate, lo, hi): the exact signed-rank interval from the Walsh averages."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return (math.nan,) * 3
    i, j = np.triu_indices(n)
    walsh = np.sort((x[i] + x[j]) / 2)
    est = float(np.median(walsh))
    cdf = _signed_rank_cdf(n)
    c = int(np.searchsorted(cdf, (1 - level) / 2, side="right"))  # P(T⁺ ≤ c − 1) ≤ (1 − level)/2
    if c == 0:
        return est, -math.inf, math.inf
    return est, float(walsh[c - 1]), float(walsh[len(walsh) - c])


def rank_plan(values, bound: float, level: float, spread_confidence: float = 0.5) -> int | None:
    """As for t, with a robust spread (1.4826 · MAD): one outlying seed does not make the plan huge."""
    x = _finite(values)
    if len(x) < 2:
        return None
    sd = 1.4826 * float(np.median(np.abs(x - np.median(x)))) or float(x.std(ddof=1))
    est = rank_interval(x, 0.5)[0]
    return _plan_normal(sd * 1.05, abs(est - bound), len(x), level, spread_confidence)  # 1.05: its efficiency against t


T = Procedure("paired t", "mean", t_interval, t_plan)
SIGN = Procedure("sign test", "median", sign_interval, sign_plan, censored_ok=True)
RANK = Procedure("signed-rank", "Hodges-Lehmann median", rank_interval, rank_plan)
PROCEDURES = {p.name: p for p in (T, SIGN, RANK)}
