"""Interrupted runs resume exactly; nothing half-written is visible; caches are
written once; untrusted files are never unpickled."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import yaml

from normbench.errors import IncompleteRun
from normbench.mirrors import cached_tensors
from normbench.runners import train
from normbench.runners.sgd import get_data
from normbench.settings import RunConfig
from normbench.store import METRICS_SCHEMA, SUMMARY_SCHEMA, read_runs
from normbench.train import Trainer
from processes import finished

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = ["wall_time_s", "train_time_s", "probe_time_s", "compute_time_s"]


def solo_cfg(**kw):
    return {**dict(model="mlp", model_options={"depth": 2, "width": 16}, norm="noisy_bn", optimizer="adam",
                   lr=0.003, batch_size=8, steps=1500, eval_every=100, threads=1, checkpoint_every=25), **kw}


def same_metrics(a: pd.DataFrame, b: pd.DataFrame):
    pd.testing.assert_frame_equal(a.drop(columns=VOLATILE, errors="ignore").reset_index(drop=True),
                                  b.drop(columns=VOLATILE, errors="ignore").reset_index(drop=True),
                                  check_exact=True, check_dtype=False)


def test_checkpoint_resume_is_exact(tmp_path):
    cfg = RunConfig.from_dict(solo_cfg(steps=120, eval_every=20, checkpoint_every=30))
    full = train(cfg).metrics
    ck = tmp_path / "ck.pt"
    t = Trainer([cfg], get_data(cfg, "cpu"), ck)
    t.total = 70  # stop early, as an interrupted job would (after the checkpoint at 60)
    t.run()
    assert ck.exists()
    resumed = Trainer([cfg], get_data(cfg, "cpu"), ck)
    assert resumed.step == 60
    same_metrics(resumed.run()[0].metrics, full)


def test_a_vectorized_pack_resumes_exactly_too(tmp_path):
    """Packs checkpoint every member (parameters, per-member BN statistics, noise streams,
    the optimizer): an interrupted pack continues, it does not restart."""
    cfgs = [RunConfig.from_dict(solo_cfg(optimizer="momentum", lr=lr, seed=s, steps=90, eval_every=30,
                                         checkpoint_every=20)) for lr, s in ((0.01, 0), (0.03, 1))]
    full = [r.metrics for r in Trainer(cfgs, get_data(cfgs[0], "cpu")).run()]
    ck = tmp_path / "pack.pt"
    t = Trainer(cfgs, get_data(cfgs[0], "cpu"), ck)
    t.total = 50
    t.run()
    resumed = Trainer(cfgs, get_data(cfgs[0], "cpu"), ck)
    assert resumed.step == 40
    for a, b in zip(resumed.run(), full):
        same_metrics(a.metrics, b)


# -- through Snakemake -----------------------------------------------------------


def pipeline_dir(tmp_path: Path, **train) -> Path:
    config = {"device": "cpu", "threads": 1,
              "studies": {"lr_bs_sweep": {"pack": False, "train": solo_cfg(**train),
                                          "grid": {"model": ["mlp"], "dataset": ["digits"], "norm": ["noisy_bn"],
                                                   "batch_size": [8], "lr": [0.003], "seed": [0]}}}}
    tr = config["studies"]["lr_bs_sweep"]["train"]
    for k in ("model", "model_options", "norm", "lr", "batch_size", "threads"):
        tr.pop(k)
    config["models"] = {"mlp": {"type": "mlp", "options": {"depth": 2, "width": 16}}}
    (tmp_path / "config").mkdir(parents=True)
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def snakemake(workdir, *extra):
    return subprocess.Popen([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
                             "--directory", str(workdir), "--cores", "1", "--rerun-incomplete",
                             "results/lr_bs_sweep/summary.parquet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(pred, timeout=120):
    t = time.time()
    while time.time() - t < timeout:
        if pred():
            return True
        time.sleep(0.05)
    raise TimeoutError


def study_metrics(workdir):
    return pd.read_parquet(workdir / "results/lr_bs_sweep/metrics.parquet").sort_values(
        ["step", "split", "metric"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    wd = pipeline_dir(tmp_path_factory.mktemp("clean"))
    p = snakemake(wd)
    finished(p, 600)
    return study_metrics(wd)


def _checkpoints(wd):
    return list((wd / "results/lr_bs_sweep/checkpoints").rglob("*.pt"))


def _job_process(snake: subprocess.Popen):
    for child in psutil.Process(snake.pid).children(recursive=True):
        if any("train_pack" in part for part in child.cmdline()):
            return child
    return None


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_identical_metrics(tmp_path, uninterrupted):
    wd = pipeline_dir(tmp_path)
    p = snakemake(wd)
    wait_for(lambda: _checkpoints(wd))  # mid-run: at least one checkpoint written
    os.killpg(p.pid, signal.SIGKILL)  # the node dies: Snakemake and the job with it
    p.wait()
    assert not (wd / "results/lr_bs_sweep/summary.parquet").exists()
    assert snakemake(wd, "--unlock").wait() == 0  # what a user does after a crash
    p = snakemake(wd)
    finished(p, 600)
    log = next((wd / "logs/train/lr_bs_sweep").rglob("*.log")).read_text()
    assert "resumed from" in log  # continued from the checkpoint, not from scratch
    same_metrics(study_metrics(wd), uninterrupted)
    assert not _checkpoints(wd)  # removed once the run finished


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_the_job_resumes(tmp_path, uninterrupted):
    wd = pipeline_dir(tmp_path, checkpoint_every=0)  # no periodic checkpoints: only SIGTERM writes one
    p = snakemake(wd)
    wait_for(lambda: _job_process(p) is not None)
    job = _job_process(p)
    log = lambda: "\n".join(f.read_text() for f in (wd / "logs/train").rglob("*.log"))  # noqa: E731
    wait_for(lambda: "step    200/" in log())  # training under way
    job.send_signal(signal.SIGTERM)  # what SLURM sends before it kills
    # the job checkpointed and exited; the rule's retries started it again and it resumed
    # from that checkpoint (periodic checkpoints are off: only the SIGTERM handler wrote one)
    out = finished(p, 600)
    resumed = re.search(r"resumed from \S+\.pt at step (\d+)", log())
    assert resumed and int(resumed.group(1)) >= 200
    assert "Error in rule train" in out, out[-3000:]  # the SIGTERMed attempt failed, and was retried
    same_metrics(study_metrics(wd), uninterrupted)
    assert not _checkpoints(wd)


# -- nothing half-written ------------------------------------------------------------


SLOW_WRITER = """
import sys, time, pandas as pd, pyarrow.parquet as pq
from normbench import store
real = pq.write_table
def slow(table, where, **kw):
    with open(where, "wb") as f:      # half a file, then a long pause: killed here
        f.write(b"PAR1" + b"x" * 1000); f.flush()
        time.sleep(60)
store.pq.write_table = slow
print("writing", flush=True)
store.write_parquet(pd.DataFrame({"a": [1]}), sys.argv[1])
"""


def test_killed_while_writing_parquet_leaves_no_partial_file(tmp_path):
    run = tmp_path / "runs/seed~0"
    target = run / "summary.parquet"
    p = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    wait_for(lambda: any(run.glob(".summary.parquet.*.tmp")))
    p.kill()
    p.wait()
    assert not target.exists()  # only a hidden temporary is left behind
    assert [f.name.startswith(".") for f in run.iterdir()] == [True]
    with pytest.raises(IncompleteRun, match=f"{target} is missing: that run did not finish"):
        read_runs([target], SUMMARY_SCHEMA)
    # the re-run writes it whole, and aggregation is complete
    res = train(RunConfig.from_dict(dict(model="mlp", model_options={"depth": 1, "width": 8}, norm="bn",
                                         steps=4, eval_every=2, threads=1)))
    res.write({"summary": target, "metrics": run / "metrics.parquet"})
    assert read_runs([target], SUMMARY_SCHEMA).num_rows == 1
    assert read_runs([run / "metrics.parquet"], METRICS_SCHEMA).num_rows == len(res.metrics)


def test_unreadable_run_file_is_refused_with_its_path(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "summary.parquet").write_bytes(b"not parquet")
    with pytest.raises(IncompleteRun, match=f"{run}/summary.parquet is unreadable"):
        read_runs([run / "summary.parquet"], SUMMARY_SCHEMA)


# -- concurrency -------------------------------------------------------------------


def test_cache_is_built_once_when_two_jobs_start_together(tmp_path):
    builds = []

    def build():
        builds.append(1)
        time.sleep(0.5)
        return {"x": torch.arange(5)}

    out = []
    threads = [threading.Thread(target=lambda: out.append(cached_tensors("demo", tmp_path, build)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and all(torch.equal(o["x"], torch.arange(5)) for o in out)


def test_two_packs_write_into_one_study_without_collisions(tmp_path):
    def job(lr):
        return {"config": RunConfig.from_dict(dict(model="mlp", model_options={"depth": 1, "width": 8}, norm="bn",
                                                   lr=lr, steps=6, eval_every=3, threads=1)).to_dict(),
                "files": {k: str(tmp_path / f"runs/{k}/lr~{lr}.parquet") for k in ("summary", "metrics")}}

    from normbench.pack import run_pack

    ps = [threading.Thread(target=run_pack, args=([job(lr)], tmp_path / f"packs/{lr}.json", lambda m: None))
          for lr in (0.1, 0.2)]
    for t in ps:
        t.start()
    for t in ps:
        t.join()
    s = read_runs([tmp_path / f"runs/summary/lr~{lr}.parquet" for lr in (0.1, 0.2)], SUMMARY_SCHEMA)
    assert sorted(s.column("lr").to_pylist()) == [0.1, 0.2]


# -- untrusted files -----------------------------------------------------------------


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ.get('EVIL_MARKER', '/tmp/normbench-evil'))}",))


def test_checkpoints_and_caches_never_execute_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    ck = tmp_path / "checkpoint.pt"
    torch.save({"step": 3, "payload": Evil()}, ck)
    cfg = RunConfig.from_dict(dict(model="mlp", model_options={"depth": 1, "width": 8}, norm="bn", steps=4))
    with pytest.raises(Exception, match="[Ww]eights only"):
        Trainer([cfg], get_data(cfg, "cpu"), ck)
    cache = tmp_path / "digits/normbench-cache.pt"
    cache.parent.mkdir()
    torch.save({"x": Evil()}, cache)
    from normbench.errors import DataError

    with pytest.raises(DataError, match="unreadable"):
        cached_tensors("digits", tmp_path, lambda: {})
    assert not marker.exists()
