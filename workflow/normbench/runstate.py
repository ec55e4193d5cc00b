"""The runs a results folder should hold (its plan) and how far it got.

The pipeline writes its plan, ``<results>/plan.parquet`` (every run of every enabled study, with its
pack, settings and settings fingerprint; the config in its footer), when Snakemake starts working; the
runs the adaptive stage adds later (``<results>/<study>/topup.json``) join it as they are decided
(``with_topups``).  The folder then tells on its
own -- wherever it was copied, without the config -- which runs are **done** (the summary exists and
its footer records the planned settings: the test ``Job.done`` applies before training), which a
checkpoint would **resume**, and which are **pending**.  ``normbench status``, the progress of
``normbench run``, the reports from partial results and the TensorBoard export read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .recorder import FINGERPRINT_KEY
from .settings import RunConfig
from .store import METRICS_SCHEMA, SUMMARY_SCHEMA, checkpoint_dir, read_metadata, read_parquet, read_runs, \
    run_files, write_parquet

PLAN_FILE = "plan.parquet"
PLAN_SCHEMA = pa.schema([
    ("study", pa.string()), ("pack", pa.string()),
    ("path", pa.string()),  # the run's path under runs/{summary,metrics}/ (store.run_files)
    ("model", pa.string()), ("runner", pa.string()),
    ("fingerprint", pa.string()),  # RunConfig.fingerprint(): what the run's summary footer must record
    ("summary_file", pa.string()),  # the summary path as the training job names it (checkpoint names use it)
    ("config", pa.string()),  # the run's RunConfig as JSON
])
DONE, RESUMABLE, PENDING = "done", "resumable", "pending"


CONFIG_KEY = "normbench.config"  # the plan's footer: the checked config it was made from


def plan_table(pipe, studies: list[str] | None = None) -> pd.DataFrame:
    """Every run of a ``pipeline.Pipeline`` (of ``studies``: all by default), study by study in config order."""
    rows = []
    for study, st in pipe.studies.items():
        if studies is not None and study not in studies:
            continue
        for pack, idx in pipe.packs(study).items():
            for i, job in zip(idx, pipe.pack_jobs(study, pack)):
                cfg = job["config"]
                rows.append({"study": study, "pack": pack, "path": st.paths[i], "model": cfg["model"],
                             "runner": cfg["runner"], "fingerprint": RunConfig.from_dict(cfg).fingerprint(),
                             "summary_file": job["files"]["summary"], "config": json.dumps(cfg, sort_keys=True)})
    return pd.DataFrame(rows, columns=PLAN_SCHEMA.names)


def write_plan(pipe, config: dict) -> Path:
    """``config``: the checked config ``pipe`` was made from (kept in the footer: the adaptive stage's runs
    are added from it once decided)."""
    path = Path(pipe.results) / PLAN_FILE
    write_parquet(plan_table(pipe), path, PLAN_SCHEMA, {CONFIG_KEY: json.dumps(config, default=str)})
    return path


def read_plan(results: str | Path) -> pd.DataFrame | None:
    """The plan of a results folder, with the adaptive stage's runs decided since; None if it has none
    (written before plans were)."""
    path = Path(results) / PLAN_FILE
    return with_topups(results, read_parquet(path, PLAN_SCHEMA)) if path.exists() else None


def plan_pipeline(results: str | Path):
    """The pipeline (unchecked: its runs only) of the config in a plan's footer; None without one."""
    from .pipeline import Pipeline

    config = read_metadata(Path(results) / PLAN_FILE, CONFIG_KEY)
    return Pipeline.from_config(json.loads(config), check_files=False, check_runs=False) if config else None


def with_topups(results: str | Path, plan: pd.DataFrame, pipe=None) -> pd.DataFrame:
    """The plan and, for each study whose adaptive stage has decided since (its ``topup.json`` in
    ``results``) and whose runs the plan lacks, the runs it added (from ``pipe``, by default the
    plan's own config)."""
    from . import topup
    from .pipeline import TOPUP_PREFIX

    parts = [plan]
    for study in dict.fromkeys(plan.study):
        if plan[plan.study == study].pack.str.startswith(TOPUP_PREFIX).any():
            continue
        decision = topup.read(Path(results) / study / "topup.json")
        if not decision or not decision.get("runs"):
            continue
        pipe = pipe or plan_pipeline(results)
        if pipe is None or study not in pipe.studies:
            continue
        pipe.load_topup(study, decision)
        added = plan_table(pipe, [study])
        parts.append(added[added.pack.str.startswith(TOPUP_PREFIX)])
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else plan


def finished(summary: str | Path, fingerprint: str) -> float | None:
    """A run's wall time if its summary is there with these settings (the footer's fingerprint), else None."""
    if read_metadata(summary, FINGERPRINT_KEY) != fingerprint:
        return None
    try:
        return float(pq.read_table(summary, columns=["wall_time_s"], partitioning=None).column(0)[0].as_py())
    except (OSError, pa.ArrowException, IndexError, TypeError):
        return None


def tree_state(results: str | Path, plan: pd.DataFrame) -> pd.DataFrame:
    """The plan with each run's ``state`` (done / resumable / pending) and, for a done run, its
    ``wall_time_s`` (its share of its pack's wall time)."""
    from .runners import RUNNERS, Job  # torch: only where a checkpoint is to be matched

    out = plan.copy()
    files = [run_files(results, s, p)["summary"] for s, p in zip(plan.study, plan.path)]
    walls = [finished(f, fp) for f, fp in zip(files, plan.fingerprint)]
    out["wall_time_s"] = [math.nan if w is None else w for w in walls]
    out["state"] = [DONE if w is not None else PENDING for w in walls]
    left = out[out.state != DONE]
    for (study, pack, runner), rows in left.groupby(["study", "pack", "runner"], sort=False):
        ckpts = checkpoint_dir(results, study, pack)
        if not ckpts.is_dir() or not any(ckpts.glob("*.pt")):
            continue
        # the jobs as the training job names them: a checkpoint's name comes from their summary paths
        jobs = [Job(RunConfig.from_dict(json.loads(c)), {"summary": Path(f)})
                for c, f in zip(rows.config, rows.summary_file)]
        for i, resumable in zip(rows.index, RUNNERS.get(runner).resumable(jobs, ckpts)):
            if resumable:
                out.loc[i, "state"] = RESUMABLE
    return out


def estimate_seconds(state: pd.DataFrame) -> pd.Series:
    """Each unfinished run's expected wall time, from the measured ones: the mean of the done runs of its
    study and model (its cost depends on the net), else of its study, else of every done run; NaN if
    nothing finished yet.  A resumable run counts whole (its checkpoint's progress is not read)."""
    done = state[state.state == DONE]
    by_model = done.groupby(["study", "model"]).wall_time_s.mean()
    by_study = done.groupby("study").wall_time_s.mean()
    overall = done.wall_time_s.mean() if len(done) else math.nan
    est = []
    for s, m, st in zip(state.study, state.model, state.state):
        est.append(0.0 if st == DONE else by_model.get((s, m), by_study.get(s, overall)))
    return pd.Series(est, index=state.index, dtype=float)


@dataclass
class StudyRuns:
    """A study's finished runs and how many it plans (``expected`` None: a folder without a plan)."""

    summary: pd.DataFrame
    metrics: pd.DataFrame
    expected: int | None
    aggregated: bool = False  # read from the study's aggregated files (what the pipeline's claims read)

    @property
    def done(self) -> int:
        return len(self.summary)

    @property
    def partial(self) -> bool:
        return self.expected is not None and self.done < self.expected


def read_finished(results: str | Path, study: str, plan: pd.DataFrame | None) -> StudyRuns:
    """A study's finished runs in plan order: its aggregated files when they are up to date with every
    planned run (or, in a folder without a plan, when they exist: they are written only once every run
    is), else the runs' own files (the planned runs that finished; without a plan, every run file there)."""
    base = Path(results) / study
    agg = base / "summary.parquet", base / "metrics.parquet"
    rows = plan[plan.study == study] if plan is not None else None
    if rows is None:
        if all(f.exists() for f in agg):
            return StudyRuns(read_parquet(agg[0], SUMMARY_SCHEMA), read_parquet(agg[1], METRICS_SCHEMA), None, True)
        tree = base / "runs" / "summary"
        paths = sorted(str(f.relative_to(tree).with_suffix("")) for f in tree.rglob("*.parquet")) if tree.is_dir() \
            else []
    else:
        summaries = {p: run_files(results, study, p)["summary"] for p in rows.path}
        paths = [p for p, fp in zip(rows.path, rows.fingerprint) if finished(summaries[p], fp) is not None]
        if len(paths) == len(rows) and all(f.exists() for f in agg) and all(
                agg[0].stat().st_mtime >= summaries[p].stat().st_mtime for p in paths):
            s = read_parquet(agg[0], SUMMARY_SCHEMA)
            if len(s) == len(rows):
                return StudyRuns(s, read_parquet(agg[1], METRICS_SCHEMA), len(rows), True)
    files = [run_files(results, study, p) for p in paths]
    s = read_runs([f["summary"] for f in files], SUMMARY_SCHEMA).to_pandas()
    m = read_runs([f["metrics"] for f in files], METRICS_SCHEMA).to_pandas()
    return StudyRuns(s, m, None if rows is None else len(rows))
