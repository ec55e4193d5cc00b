"""`make run` killed at any moment (kill -9 of its whole process group: power loss, a node
dying, Ctrl-C twice) and started again finishes the work with the results of a clean run."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from processes import finished

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = ["wall_time_s", "train_time_s", "probe_time_s", "compute_time_s"]
CONFIG = {"device": "cpu", "threads": 1,
          "models": {"tiny": {"type": "vgg", "options": {"layers": [8, "M", 16]}}},
          "train": {"steps": 150, "eval_every": 50, "checkpoint_every": 50},
          "studies": {
              "lr_bs_sweep": {"pack": False, "grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn", "ln"],
                                                      "batch_size": [16], "lr": [0.05], "seed": [0, 1]}}}}
PHASES = {  # what appears on disk when the run is in that phase
    "training": lambda wd: any((wd / "results").rglob("*.pt")) or any((wd / "logs/train").rglob("*.log")),
    "aggregation": lambda wd: any((wd / "logs/aggregate").glob("*.log")) or any((wd / "logs/claims").glob("*.log")),
    "reports": lambda wd: any((wd / "logs/report").glob("*.log")),
}


def checkout(tmp: Path) -> Path:
    """A copy of this checkout's tracked files (times kept: the set-up stamp stays newer than the
    lock, so `make` does not reinstall) sharing its environment, with a small config."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files += subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, tmp / f)
    (tmp / ".venv").symlink_to(ROOT / ".venv")
    (tmp / "config/config.yaml").write_text(yaml.safe_dump(CONFIG))
    return tmp


def make_run(wd: Path) -> subprocess.Popen:
    return subprocess.Popen(["make", "run"], cwd=wd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def summaries(wd: Path) -> pd.DataFrame:
    out = [pd.read_parquet(f).drop(columns=VOLATILE) for f in sorted((wd / "results").glob("*/summary.parquet"))]
    return pd.concat(out, ignore_index=True).sort_values(["study", "norm", "seed"]).reset_index(drop=True)



@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    wd = checkout(tmp_path_factory.mktemp("clean"))
    p = make_run(wd)
    finished(p, 900)
    return summaries(wd)


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(PHASES))
def test_kill_9_then_make_run_again_gives_the_clean_results(phase, tmp_path, clean):
    wd = checkout(tmp_path)
    p = make_run(wd)
    t = time.time()
    while not PHASES[phase](wd):
        assert p.poll() is None, f"the run ended before the {phase} phase"
        assert time.time() - t < 600
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)  # make, normbench run, snakemake and its jobs, all at once
    p.wait()
    again = make_run(wd)
    finished(again, 900)
    pd.testing.assert_frame_equal(summaries(wd), clean, check_exact=True)
    assert (wd / "reports/index.md").exists() and (wd / "reports/report.html").exists()
    assert not list((wd / "results").rglob("*.pt"))  # checkpoints are gone once their runs finished
