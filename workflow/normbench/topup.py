"""The adaptive stage: seeds added where a claim is undecided, and the second look at it.

After a study's base runs, every claim is checked (the first look).  A claim that is inconclusive
and whose plan (``intervals``: the seeds at which its interval would clear its bound with 80% power
at the measured spread) asks for at most twice ``max_seeds`` gets the seeds planned at the spread's
upper confidence limit, up to ``max_seeds`` in all -- new seeds for every run of its arm
(``Claim.arm``), nothing else -- and is checked again on all of them (the second look).  A plan that
asks for more than twice the cap gets nothing (it would not be decided).  A claim decided at the
first look keeps that verdict, checked on its base runs alone, so a seed added for another claim
never re-opens it.  Both looks use ``claims.LOOK_LEVEL`` intervals (α split over the two looks).

The added runs are ordinary runs (their own packs, resumable); the decision is one JSON file per
study, ``<results>/<study>/topup.json``, written by a Snakemake checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .claims import INCONCLUSIVE, evaluate
from .store import PARAM_COLUMNS, write_text

KEY = [c for c in PARAM_COLUMNS if c not in ("study", "seed")]  # a run's identity but its seed


@dataclass
class Look:
    """What the adaptive stage did for one claim."""

    claim: str
    added: list[int] = field(default_factory=list)  # seeds added for it (empty: decided on the base runs)
    topup: pd.DataFrame | None = None  # every run the stage added to the study (KEY + seed)

    def runs(self, s: pd.DataFrame, m: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The runs it is decided on: every run after its own top-up, else the base runs alone."""
        if self.added or self.topup is None or self.topup.empty:
            return s, m
        return base_runs(s, self.topup), base_runs(m, self.topup)


def base_runs(df: pd.DataFrame, topup: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``df`` (summary or metrics) that are not of an added run."""
    if topup.empty or df.empty:
        return df
    added = df[KEY + ["seed"]].merge(topup[KEY + ["seed"]].drop_duplicates(), how="left", indicator=True)
    return df[(added["_merge"] == "left_only").to_numpy()]


def seeds_to_add(needed: int | None, n: int, max_seeds: int, planned: int | None = None) -> int:
    """How many seeds an undecided claim on ``n`` seeds gets: none when, at the measured spread, it would
    take more than twice the cap (or nothing would decide it); else up to ``planned`` -- the plan at the
    spread's upper confidence limit, which the few base seeds leave wide (None: beyond any plan) -- at
    most ``max_seeds`` in all.  Every count is of seeds (``claims`` turns a plan of values into seeds
    where a seed gives several)."""
    if not needed or needed > 2 * max_seeds or n >= max_seeds:
        return 0
    return int(max(min(max(planned or max_seeds, needed), max_seeds) - n, 1))


def plan(study: str, claims, s: pd.DataFrame, m: pd.DataFrame, max_seeds: int) -> dict:
    """The first look and its decision: per claim its verdict, seeds and the seeds added; the added runs.
    New seeds start above every seed of the study (so two claims sharing runs add nested seed lists)."""
    first = evaluate(study, claims, s, m)
    start = int(s.seed.max()) + 1 if len(s) else 0
    out, runs = {}, []
    for c, row in zip(claims, first.itertuples()):
        needed, planned = (None if pd.isna(v) else int(v) for v in (row.needed, row.planned))
        k = seeds_to_add(needed, int(row.seeds), max_seeds, planned) if row.verdict == INCONCLUSIVE else 0
        added = list(range(start, start + k))
        out[c.id] = {"verdict": row.verdict, "n": int(row.seeds), "needed": needed, "planned": planned, "added": added}
        if k:
            arm = s[c.arm(s)][KEY].drop_duplicates()
            runs += [{**r, "seed": seed} for r in arm.to_dict("records") for seed in added]
    table = pd.DataFrame(runs, columns=KEY + ["seed"]).drop_duplicates()
    have = s[KEY + ["seed"]].drop_duplicates()
    table = table.merge(have, how="left", indicator=True)
    table = table[table["_merge"] == "left_only"].drop(columns="_merge")
    return {"study": study, "max_seeds": max_seeds, "claims": out,
            "runs": [{k: _plain(v) for k, v in r.items()} for r in table.to_dict("records")]}


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def write(decision: dict, path: str | Path) -> None:
    write_text(json.dumps(decision, indent=1), path)


def read(path: str | Path) -> dict | None:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else None


def looks(decision: dict | None) -> dict[str, Look] | None:
    """claim id -> its Look, for ``claims.evaluate``; None where no adaptive stage ran."""
    if not decision:
        return None
    topup = pd.DataFrame(decision["runs"], columns=KEY + ["seed"])
    return {cid: Look(cid, list(c["added"]), topup) for cid, c in decision["claims"].items()}
