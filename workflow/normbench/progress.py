"""Runs finished out of the plan, live (`normbench run`) or after the fact (`normbench status`).

Snakemake counts jobs; a job here trains a pack of runs, so its "3 of 44 steps" says little about
when the runs will end.  ``Tracker`` counts runs instead: a run is finished when its summary file is
there with the planned settings (``runstate.finished``), and the time left is the measured wall
times of finished runs (by study and model) applied to the unfinished ones, divided by the rate this
session gets through run-seconds (how many jobs truly run at once, measured, not assumed).

It runs in the launcher's process, never in a training job: a poll is a ``stat`` of each unfinished
run's summary file (a footer read for a new one) once a second.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

import pandas as pd

from .runstate import DONE, PENDING, RESUMABLE, estimate_seconds, finished
from .store import run_files


def duration(seconds: float | None) -> str:
    """12s, 4m05s, 2h07m; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Tracker:
    """The runs of a plan (``runstate.plan_table``) under ``results``, counted as they finish."""

    def __init__(self, plan: pd.DataFrame, results: str | Path, clock: Callable[[], float] = time.monotonic,
                 grow: Callable[[pd.DataFrame], pd.DataFrame] | None = None):
        """``grow``: the plan with the runs a study's adaptive stage added (``runstate.with_topups``), asked
        for once the study's ``topup.json`` appears."""
        self.results, self.grow, self._grown = Path(results), grow, set()
        self.plan = plan.iloc[:0]
        self.files, self.done, self.now, self.wall = [], [], [], []  # finished; during this session; wall time
        self._extend(plan)
        self.studies = list(dict.fromkeys(self.plan.study))
        self._seen: dict[int, tuple[int, int]] = {}  # run -> (mtime, size) of its summary when last read
        self.clock, self.t0 = clock, clock()
        self.poll(session=False)  # what earlier sessions finished

    def _extend(self, plan: pd.DataFrame) -> None:
        """Take ``plan``: the runs it has beyond those tracked (appended after them) join, not yet done."""
        added = plan.iloc[len(self.plan):]
        self.plan = plan.reset_index(drop=True)
        self.files += [run_files(self.results, s, p)["summary"] for s, p in zip(added.study, added.path)]
        self.done += [False] * len(added)
        self.now += [False] * len(added)
        self.wall += [math.nan] * len(added)

    def poll(self, session: bool = True) -> int:
        """Look for newly finished runs; how many there were."""
        for study in self.studies if self.grow else ():
            if study not in self._grown and (self.results / study / "topup.json").exists():
                self._grown.add(study)
                self._extend(self.grow(self.plan))
        new = 0
        for i, f in enumerate(self.files):
            if self.done[i]:
                continue
            try:
                st = os.stat(f)
            except OSError:
                continue
            key = (st.st_mtime_ns, st.st_size)
            if self._seen.get(i) == key:  # read before, with other settings: unchanged since
                continue
            self._seen[i] = key
            w = finished(f, self.plan.fingerprint[i])
            if w is not None:
                self.done[i], self.now[i], self.wall[i] = True, session, w
                new += 1
        return new

    def counts(self) -> dict[str, tuple[int, int]]:
        """study -> (finished, planned)."""
        out = {s: [0, 0] for s in self.studies}
        for s, d in zip(self.plan.study, self.done):
            out[s][0] += d
            out[s][1] += 1
        return {s: (d, t) for s, (d, t) in out.items()}

    def eta(self) -> float | None:
        """Seconds until every run is finished: the unfinished runs' expected wall times over the rate at
        which this session finishes run-seconds.  None until a run has finished in this session."""
        elapsed = self.clock() - self.t0
        worked = sum(w for w, n in zip(self.wall, self.now) if n)
        if all(self.done):
            return 0.0
        if not worked or elapsed <= 0:
            return None
        state = self.plan.assign(state=[DONE if d else PENDING for d in self.done], wall_time_s=self.wall)
        left = estimate_seconds(state).sum(skipna=False)
        return left / (worked / elapsed) if math.isfinite(left) else None

    def line(self) -> str:
        """One plain line: every run, the time, then each study."""
        c = self.counts()
        done, total = sum(d for d, _ in c.values()), sum(t for _, t in c.values())
        eta = self.eta()
        when = ("all done" if done == total else f"ETA {duration(eta)}" if eta is not None
                else "ETA after the first runs finish")
        pct = 100 * done / total if total else 100.0
        studies = " · ".join(f"{s} {d}/{t}" for s, (d, t) in c.items())
        return (f"normbench: {done}/{total} runs finished ({pct:.0f}%), {duration(self.clock() - self.t0)} "
                f"elapsed, {when} | {studies}")


class Progress:
    """Shows a tracker while Snakemake works: bars in a terminal (tqdm), else a plain line every
    ``every`` seconds (CI logs, SLURM output files).  ``make`` builds the tracker in the background
    thread (it reads the config's runs), so Snakemake starts at once; ``write`` passes Snakemake's own
    lines above the bars."""

    def __init__(self, make: Callable[[], Tracker], bars: bool, every: float = 30.0, stream: TextIO | None = None):
        self.make, self.use_bars, self.every = make, bars, every
        self.stream = stream or sys.stderr
        self.tracker: Tracker | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="normbench-progress", daemon=True)
        self._bars: dict = {}
        self.error: BaseException | None = None

    def start(self) -> "Progress":
        self._thread.start()
        return self

    def _loop(self) -> None:
        try:
            self.tracker = self.make()
        except BaseException as e:  # progress is a courtesy: a failure here must not stop the run
            self.error = e
            self._print(f"normbench: no progress display ({type(e).__name__}: {e})")
            return
        last = -math.inf
        while True:
            now = time.monotonic()
            if self.use_bars:
                self._draw()
            elif now - last >= self.every:
                self._print(self.tracker.line())
                last = now
            if self._stop.wait(1.0):
                return
            self.tracker.poll()

    def stop(self) -> None:
        """The last count, then the display closes (bars stay on screen)."""
        self._stop.set()
        self._thread.join()
        if self.tracker is None:
            return
        self.tracker.poll()
        if self.use_bars:
            self._draw()
            for bar in self._bars.values():
                bar.close()
        self._print(self.tracker.line())

    def write(self, line: str) -> None:
        """A line of Snakemake's output, above the bars."""
        if self.use_bars:
            from tqdm import tqdm

            tqdm.write(line.rstrip("\n"), file=self.stream)
        else:
            self.stream.write(line)
            self.stream.flush()

    def _print(self, text: str) -> None:
        self.write(text + "\n")

    def _draw(self) -> None:
        from tqdm import tqdm

        t = self.tracker
        counts = t.counts()
        if not self._bars:
            width = max([len("all runs"), *map(len, counts)])
            total = sum(n for _, n in counts.values())
            self._bars["all"] = tqdm(total=total, desc="all runs".rjust(width), position=0, file=self.stream,
                                     dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                                                    "{n}/{total} [{elapsed}{postfix}]")
            for i, (s, (_, n)) in enumerate(counts.items(), 1):
                self._bars[s] = tqdm(total=n, desc=s.rjust(width), position=i, file=self.stream, dynamic_ncols=True,
                                     bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total}")
        eta = t.eta()
        self._bars["all"].set_postfix_str("ETA " + (duration(eta) if eta is not None else "after the first runs"),
                                          refresh=False)
        self._bars["all"].n = sum(d for d, _ in counts.values())
        for s, (d, _) in counts.items():
            self._bars[s].n = d
        for bar in self._bars.values():
            bar.refresh()


# -- normbench status ------------------------------------------------------------------------------


def status_table(state: pd.DataFrame) -> pd.DataFrame:
    """Per study: runs done, resumable, pending, planned, and the run-seconds left (from the measured
    wall times: ``runstate.estimate_seconds``; NaN while no run has finished)."""
    est = estimate_seconds(state)
    rows = []
    for study, g in state.groupby("study", sort=False):
        n = g.state.value_counts()
        left = est[g.index].sum(skipna=False)
        rows.append({"study": study, DONE: int(n.get(DONE, 0)), RESUMABLE: int(n.get(RESUMABLE, 0)),
                     PENDING: int(n.get(PENDING, 0)), "planned": len(g), "left_s": left})
    return pd.DataFrame(rows)


def status_text(results: str | Path, state: pd.DataFrame, jobs: int, show: int = 10) -> str:
    """What ``normbench status`` prints: a table by study, the time left, then the runs left by name."""
    table = status_table(state)
    left = table.left_s.sum(skipna=False)
    shown = table.assign(left=[("–" if r.done == r.planned else duration(r.left_s / jobs))
                               for r in table.itertuples()]).drop(columns="left_s")
    total = {c: int(table[c].sum()) for c in (DONE, RESUMABLE, PENDING, "planned")}
    lines = [f"{results}: {total[DONE]} of {total['planned']} planned runs done, {total[RESUMABLE]} resumable from "
             f"a checkpoint, {total[PENDING]} pending.", "", shown.to_string(index=False), ""]
    if total[DONE] == total["planned"]:
        lines.append("Every planned run is done.")
        return "\n".join(lines) + "\n"
    lines.append(f"Time left: about {duration(left / jobs)} at {jobs} runs at once (the measured wall times of the "
                 f"finished runs, by study and model; a resumable run counted whole)" if math.isfinite(left) else
                 "Time left: unknown until runs have finished (it is measured from them)")
    lines += ["", "Left to run (`normbench run` resumes them):"]
    for study, g in state[state.state != DONE].groupby("study", sort=False):
        lines.append(f"  {study}:")
        for r in g.head(show).itertuples():
            lines.append(f"    {r.state:<9} {r.path}")
        if len(g) > show:
            lines.append(f"    … and {len(g) - show} more (--all lists them)")
    return "\n".join(lines) + "\n"
