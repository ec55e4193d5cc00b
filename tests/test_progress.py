"""Runs finished out of the plan: counted from the runs' own files (with the planned settings), the
time left from measured wall times, shown as plain lines where the output is not a terminal, and
`normbench status` on a folder killed mid-run naming what is left."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from normbench import cli
from normbench.progress import Progress, Tracker, duration, status_table
from normbench.recorder import FINGERPRINT_KEY
from normbench.runstate import DONE, PENDING, RESUMABLE, PLAN_SCHEMA, read_plan, tree_state
from normbench.store import read_metadata, run_files, write_parquet

import trees

ROOT = Path(__file__).resolve().parents[1]


def fake_plan(rows) -> pd.DataFrame:
    """(study, model, path) rows; the rest of the plan's columns as the tracker needs them."""
    return pd.DataFrame([{"study": s, "pack": p, "path": p, "model": m, "runner": "sgd", "fingerprint": f"fp-{p}",
                          "summary_file": "", "config": "{}"} for s, m, p in rows], columns=PLAN_SCHEMA.names)


def finish_run(results: Path, study: str, path: str, wall: float, fingerprint: str | None = None) -> None:
    """A run's summary file as a finished run leaves it: its wall time, the settings' fingerprint in its footer."""
    write_parquet(pd.DataFrame({"wall_time_s": [wall]}), run_files(results, study, path)["summary"],
                  metadata={FINGERPRINT_KEY: fingerprint or f"fp-{path}"})


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_tracker_counts_runs_with_the_planned_settings_and_measures_the_time_left(tmp_path):
    plan = fake_plan([("a", "mlp", "r1"), ("a", "mlp", "r2"), ("a", "cnn", "r3"), ("b", "cnn", "r4"),
                      ("b", "vgg", "r5")])
    finish_run(tmp_path, "a", "r1", 3.0)  # an earlier session's run
    finish_run(tmp_path, "b", "r5", 7.0, fingerprint="other settings")  # to be trained again
    clock = Clock()
    t = Tracker(plan, tmp_path, clock)
    assert t.counts() == {"a": (1, 3), "b": (0, 2)}
    assert t.eta() is None  # nothing finished in this session yet: no rate to go by
    assert "ETA after the first runs finish" in t.line()
    clock.t += 10
    finish_run(tmp_path, "a", "r3", 4.0)
    finish_run(tmp_path, "b", "r4", 6.0)
    assert t.poll() == 2 and t.poll() == 0
    # this session: 4 + 6 run-seconds in 10 s, a rate of 1.  Left: r2 (study a, mlp: 3 s, from r1) and r5
    # (study b, vgg: none done; study b's mean, 6 s): 9 s at rate 1
    assert t.eta() == pytest.approx(9.0)
    assert t.line() == ("normbench: 3/5 runs finished (60%), 10s elapsed, ETA 9s | a 2/3 · b 1/2")
    finish_run(tmp_path, "b", "r5", 7.0)  # now with the planned settings
    finish_run(tmp_path, "a", "r2", 1.0)
    t.poll()
    assert t.eta() == 0.0 and "5/5 runs finished (100%)" in t.line() and "all done" in t.line()


def test_durations():
    assert [duration(x) for x in (None, float("nan"), 0.4, 59.6, 61, 3599, 3600 * 2 + 7 * 60 + 20)] == \
        ["?", "?", "0s", "1m00s", "1m01s", "59m59s", "2h07m"]


def test_plain_lines_where_the_output_is_no_terminal(tmp_path):
    plan = fake_plan([("a", "mlp", "r1"), ("a", "mlp", "r2")])
    out = io.StringIO()
    p = Progress(lambda: Tracker(plan, tmp_path), bars=False, every=0.0, stream=out).start()
    while out.getvalue().count("\n") < 1:
        time.sleep(0.01)
    finish_run(tmp_path, "a", "r1", 1.0)
    finish_run(tmp_path, "a", "r2", 1.0)
    p.write("a line of Snakemake's\n")
    p.stop()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("normbench: 0/2 runs finished (0%), ")
    assert "a line of Snakemake's" in lines
    assert lines[-1].startswith("normbench: 2/2 runs finished (100%)") and lines[-1].endswith("all done | a 2/2")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()  # no bar, no cursor movement


def test_the_bars_show_each_study_and_the_total(tmp_path):
    """In a terminal: tqdm bars, one for every run and one per study, Snakemake's lines above them."""
    plan = fake_plan([("a", "mlp", "r1"), ("a", "mlp", "r2"), ("b", "cnn", "r3")])
    finish_run(tmp_path, "a", "r1", 1.0)
    out = io.StringIO()
    p = Progress(lambda: Tracker(plan, tmp_path), bars=True, stream=out).start()
    while "all runs" not in out.getvalue():
        time.sleep(0.01)
    p.write("rule train:\n")
    p.stop()
    text = out.getvalue()
    assert "rule train:\n" in text
    last = text.rsplit("\rall runs", 1)[1]  # the final drawing of the bars
    assert last.startswith(":  33%|") and "| 1/3 [" in last and ", ETA after the first runs]" in last
    assert "\r       a:  50%|" in last and "| 1/2" in last and "\r       b:   0%|" in last and "| 0/1" in last
    final = text.splitlines()[-1]
    assert final.startswith("normbench: 1/3 runs finished (33%), ")
    assert final.endswith("elapsed, ETA after the first runs finish | a 1/2 · b 0/1")


def test_a_tracker_failure_never_stops_the_run(tmp_path):
    out = io.StringIO()

    def broken():
        raise OSError("results unreadable")

    p = Progress(broken, bars=False, stream=out).start()
    p.stop()
    assert out.getvalue() == "normbench: no progress display (OSError: results unreadable)\n"


# -- the real thing: a pipeline killed mid-run --------------------------------------------------------

KILLED = {"device": "cpu", "threads": 1, "models": {"tiny": {"type": "vgg", "options": {"layers": [4, "M"]}}},
          "train": {"steps": 6, "eval_every": 3},
          "studies": {
              "bn_placement": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn"],
                                        "placement": ["pre", "post"], "batch_size": [8], "lr": [0.05],
                                        "seed": [0, 1]}},
              # a pack per norm (its two seeds vectorized: one checkpoint); long enough to be caught training
              "lr_bs_sweep": {"train": {"steps": 100000, "eval_every": 1000, "checkpoint_every": 5},
                              "grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn", "ln"],
                                       "batch_size": [8], "lr": [0.05], "seed": [0, 1]}}}}


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> tuple[Path, str]:
    """`normbench run` with its output piped to a file, killed (SIGKILL of its process group) once a
    checkpoint of a long run exists; its output."""
    wd = tmp_path_factory.mktemp("killed")
    (wd / "config").mkdir()
    (wd / "config/config.yaml").write_text(yaml.safe_dump(KILLED))
    log = wd / "run.log"
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "normbench.cli", "run", "--snakefile", str(ROOT / "Snakefile"),
                              "--cores", "2", "--progress-every", "1"], cwd=wd, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
    t = time.time()
    while not list((wd / "results/lr_bs_sweep/checkpoints").rglob("*.pt")):
        assert p.poll() is None, log.read_text()[-3000:]
        assert time.time() - t < 600, log.read_text()[-3000:]
        time.sleep(0.1)
    time.sleep(1.0)  # a few more checkpoints, and whatever else finishes meanwhile
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return wd, log.read_text()


@pytest.mark.slow
def test_run_piped_to_a_file_prints_plain_progress_lines(killed):
    _, out = killed
    lines = [line for line in out.splitlines() if line.startswith("normbench: ")]
    assert lines, out[-3000:]
    # the first count comes before any run finished: runs are counted from the start, not after training
    assert lines[0].startswith("normbench: 0/8 runs finished (0%), ") and "bn_placement 0/4 · lr_bs_sweep 0/4" in \
        lines[0]
    assert "\r" not in out and "\x1b[" not in out  # plain lines: no bars, no cursor movement in a file


@pytest.mark.slow
def test_status_of_a_killed_run_names_what_is_left(killed, capsys, monkeypatch):
    wd, _ = killed
    results = wd / "results"
    plan = read_plan(results)
    assert len(plan) == 8 and set(plan.study) == {"bn_placement", "lr_bs_sweep"}
    # the oracle, from the files themselves: a run is done if its summary records its planned settings; an
    # lr_bs_sweep run is resumable if its pack (its norm's two seeds, trained as one) holds a checkpoint
    done = {p for s, p, fp in zip(plan.study, plan.path, plan.fingerprint)
            if read_metadata(run_files(results, s, p)["summary"], FINGERPRINT_KEY) == fp}
    resumable = {p for s, k, p in zip(plan.study, plan.pack, plan.path)
                 if p not in done and any((results / s / "checkpoints" / k).glob("*.pt"))}
    assert len(resumable) in (2, 4) and len(done) < 8
    state = tree_state(results, plan)  # an absolute folder: checkpoints are named by the job's relative paths
    assert set(state[state.state == DONE].path) == done and set(state[state.state == RESUMABLE].path) == resumable
    monkeypatch.chdir(wd)
    assert cli.main(["status", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    pending = 8 - len(done) - len(resumable)
    assert out.startswith(f"results: {len(done)} of 8 planned runs done, {len(resumable)} resumable from a checkpoint, "
                          f"{pending} pending.")
    if not done:  # nothing measured yet: no time left to give
        assert "Time left: unknown until runs have finished" in out
    for s, p in zip(plan.study, plan.path):
        if p not in done:
            state_of = RESUMABLE if p in resumable else PENDING
            assert f"    {state_of:<9} {p}" in out.splitlines()
        else:
            assert p not in out
    table = status_table(state).set_index("study")
    assert table.loc["lr_bs_sweep", [DONE, RESUMABLE, PENDING, "planned"]].tolist() == [
        sum(p in done for p in plan[plan.study == "lr_bs_sweep"].path), len(resumable),
        4 - len(resumable) - sum(p in done for p in plan[plan.study == "lr_bs_sweep"].path), 4]


def test_status_without_a_plan_says_what_to_do(tmp_path, capsys):
    assert cli.main(["status", str(tmp_path)]) == 2
    assert "plan.parquet is missing" in capsys.readouterr().err


def test_status_reads_the_runs_from_a_config_when_asked(tmp_path, capsys, monkeypatch):
    pipe = trees.pipeline(tmp_path / "results")
    trees.train(pipe, "bn_placement")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**trees.TINY, "results": str(tmp_path / "results")}))
    assert cli.main(["status", str(tmp_path / "results"), "--configfile", str(tmp_path / "tiny.yaml"), "--all",
                     "--jobs", "3"]) == 0
    out = capsys.readouterr().out
    assert "6 of 30 planned runs done, 0 resumable from a checkpoint, 24 pending." in out
    assert out.count("    pending   ") == 24 and "more (--all lists them)" not in out
    # the other studies' runs are estimated by the only measured ones (same model): 24 × their mean, 3 at once
    mean = pd.concat(pd.read_parquet(f) for f in (tmp_path / "results").rglob("runs/summary/**/*.parquet")).wall_time_s.mean()
    assert f"Time left: about {duration(24 * mean / 3)} at 3 runs at once" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:6]}
    assert rows["lr_bs_sweep"][1:] == ["0", "0", "12", "12", duration(12 * mean / 3)]
    assert rows["bn_placement"][1:] == ["6", "0", "0", "6", "–"]


def test_the_runs_the_adaptive_stage_adds_join_the_count_once_decided(tmp_path):
    """topup.json (the adaptive stage's decision, written after the plan) adds its runs to the live count,
    to `normbench status` and to the partial reports' plan, from the config in the plan's footer."""
    import json as js

    from normbench import topup
    from normbench.pipeline import aggregate_study
    from normbench.runstate import read_finished, with_topups

    results = tmp_path / "results"
    pipe = trees.planned(results)
    live = trees.pipeline(results)  # what the launcher holds
    t = Tracker(read_plan(results), results, grow=lambda p: with_topups(results, p, live))
    assert t.counts()["gn_small_batch"] == (0, 12) and len(read_plan(results)) == 30
    trees.train(pipe, "gn_small_batch")
    t.poll()
    assert t.counts()["gn_small_batch"] == (12, 12)
    base = read_finished(results, "gn_small_batch", read_plan(results)).summary
    added = [{k: r[k] for k in topup.KEY} | {"seed": seed} for _, r in base[base.norm == "bn"].drop_duplicates(
        topup.KEY).iterrows() for seed in (3, 4)]
    topup.write({"study": "gn_small_batch", "max_seeds": 5, "claims": {}, "runs": added},
                results / "gn_small_batch/topup.json")
    t.poll()
    assert t.counts()["gn_small_batch"] == (12, 16) and t.counts()["lr_bs_sweep"] == (0, 12)
    plan = read_plan(results)
    assert len(plan) == 34 and set(plan[plan.pack.str.startswith("topup/")].path.str[-6:]) == {"seed~3", "seed~4"}
    assert [js.loads(c)["seed"] for c in plan[plan.pack.str.startswith("topup/")].config] == [3, 4, 3, 4]
    pipe.load_topup("gn_small_batch")
    for pack in pipe.packs("gn_small_batch"):
        if pack.startswith("topup/"):
            trees.train(pipe, "gn_small_batch", [pack])
    t.poll()
    assert t.counts()["gn_small_batch"] == (16, 16)
    aggregate_study(pipe, "gn_small_batch")
    r = read_finished(results, "gn_small_batch", read_plan(results))
    assert r.aggregated and r.done == r.expected == 16 and sorted(set(r.summary.seed)) == [0, 1, 2, 3, 4]
