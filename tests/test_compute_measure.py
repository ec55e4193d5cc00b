"""The useful-compute fraction: CPU time spent training ÷ what the machine offered (cores × wall),
from the runs' compute_time_s, never their wall time (which counts waiting as work)."""

import json
import os
import time

import pandas as pd
import pytest

from normbench import recorder as R
from normbench.pack import pipeline_stats
from normbench.settings import RunConfig


def _summary(path, compute, wall=100.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"wall_time_s": wall, "compute_time_s": compute}]).to_parquet(path)
    return path


def test_fraction_is_cpu_time_over_cores_times_wall(tmp_path):
    results = tmp_path / "results"
    since = time.time() - 5
    old = _summary(results / "s" / "runs" / "summary" / "old.parquet", 1000.0)
    os.utime(old, (since - 60, since - 60))  # finished by an earlier pipeline run: not this one's work
    runs = [_summary(results / "s" / "runs" / "summary" / f"r{i}.parquet", c) for i, c in enumerate((3.0, 5.0))]
    marker = results / "s" / "packs" / "p" / "pack.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"runs": [str(old)] + [str(r.relative_to(tmp_path)) for r in runs]}))
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the marker's relative paths are relative to the results' parent
    try:
        st = pipeline_stats(results, wall=10.0, cores=2, since=since)
    finally:
        os.chdir(cwd)
    # (3 + 5) CPU-s over 2 cores × 10 s; the runs' wall times (100 s each) would give 10
    assert st == {"runs": 2, "wall_s": 10.0, "cores": 2, "useful_s": 8.0, "fraction": pytest.approx(0.4)}


def test_run_paths_are_the_pipelines_not_the_current_directorys(tmp_path, monkeypatch):
    """`make bench` after `make run`: the bench's pipeline ran in a scratch folder, and the checkout it is
    called from holds older runs at the same relative paths; those are not the pipeline's runs."""
    since = time.time() - 5
    rel = "results/s/runs/summary/r0.parquet"
    older = _summary(tmp_path / "checkout" / rel, 1000.0)
    os.utime(older, (since - 60, since - 60))
    scratch = tmp_path / "scratch"
    _summary(scratch / rel, 3.0)
    marker = scratch / "results" / "s" / "packs" / "p" / "pack.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"runs": [rel]}))
    monkeypatch.chdir(tmp_path / "checkout")
    st = pipeline_stats(scratch / "results", wall=1.0, cores=1, since=since, workdir=scratch)
    assert st is not None and (st["runs"], st["useful_s"]) == (1, 3.0)


def test_no_finished_runs_no_fraction(tmp_path):
    assert pipeline_stats(tmp_path, wall=1.0, cores=1) is None


class Clock:
    def __init__(self):
        self.wall = self.cpu = 0.0


def test_recorder_reports_cpu_time_and_a_pack_member_its_share(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(R.time, "perf_counter", lambda: clock.wall)
    monkeypatch.setattr(R.time, "process_time", lambda: clock.cpu)
    rec = R.Recorder(RunConfig(), per_epoch=10, classification=True)
    rec.start(0.0, 0.0)
    clock.wall, clock.cpu = 12.0, 9.0  # 3 s of the wall spent waiting
    rec.eval_point(0, 0, 0.0, 0.0, 1.0, 0.5)
    assert rec.result(0, -1, 1, "cpu").summary["compute_time_s"] == 9.0
    rec.share(3)  # one of a pack of three
    clock.wall, clock.cpu = 13.0, 10.0
    s = rec.result(0, -1, 1, "cpu").summary
    assert s["compute_time_s"] == pytest.approx(9.0 / 3 + 1.0) and s["wall_time_s"] == pytest.approx(12.0 / 3 + 1.0)


def test_checkpoint_keeps_cpu_time(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(R.time, "process_time", lambda: clock.cpu)
    rec = R.Recorder(RunConfig(), per_epoch=10, classification=True)
    rec.start(0.0, 0.0)
    clock.cpu = 4.0
    state = rec.state()
    clock.cpu = 50.0  # a new process resumes the run
    again = R.Recorder(RunConfig(), per_epoch=10, classification=True)
    again.load_state(state)
    clock.cpu = 51.0
    assert again.compute() == pytest.approx(5.0)
