"""Several jobs per GPU: GPUs × gpu_jobs slots, a job claims the first free one, slot k trains on
GPU k mod GPUs; `normbench run` offers the slots to Snakemake, the train rule asks for one."""

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from normbench import devices, launcher
from normbench.config import default_config_path, load
from normbench.errors import ConfigError
from normbench.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def slots(monkeypatch, tmp_path):
    """Lock files in a scratch folder; `hold(k)` plays another job holding slot k."""
    monkeypatch.setattr(devices.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(devices, "_HELD", [])
    held = []

    def hold(*ks):
        for k in ks:
            f = open(devices.slot_lock(k), "w")
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(f)

    yield hold
    for f in held:
        f.close()


@pytest.mark.parametrize("busy, gpu", [((), 0), ((0,), 1), ((0, 1), 0), ((0, 1, 2), 1), ((1, 3), 0), ((0, 1, 2, 4), 1)])
def test_a_job_takes_the_first_free_slot_and_its_gpu(slots, busy, gpu):
    slots(*busy)
    assert devices.claim_gpu(count=2, gpu_jobs=3) == gpu
    assert devices.claim_gpu(count=2, gpu_jobs=3) == gpu  # a process keeps its slot


def test_slots_beyond_gpus_times_jobs_are_not_taken(slots):
    slots(*range(4))  # 2 GPUs × 2 jobs, all busy: a fifth job spreads by pid, takes no slot
    assert devices.claim_gpu(count=2, gpu_jobs=2) == os.getpid() % 2
    assert devices._HELD == [] and not Path(devices.slot_lock(4)).exists()


def test_one_gpu_needs_no_slot(slots):
    assert devices.claim_gpu(count=1, gpu_jobs=8) == 0 and devices._HELD == []


@pytest.mark.parametrize("config, count, expect", [
    ({"device": "cuda", "gpu_jobs": 4}, 2, 8), ({"device": "auto", "gpu_jobs": 3}, 1, 3),
    ({"device": "auto", "gpu_jobs": 3}, 0, 0), ({"device": "cpu", "gpu_jobs": 3}, 2, 0),
    ({"device": "cuda:1", "gpu_jobs": 4}, 2, 4), ({"device": "cuda"}, 2, 2),
])
def test_gpu_slots_are_gpus_times_jobs(config, count, expect):
    assert devices.gpu_slots(config, count) == expect


def test_launcher_offers_the_slots_unless_a_profile_or_the_user_does():
    cfg = {"device": "cuda", "gpu_jobs": 4}
    assert launcher.gpu_slot_args(cfg, ["-n"], count=2) == ["--resources", "gpu_slots=8"]
    assert launcher.gpu_slot_args(cfg, ["--profile", "workflow/profiles/workstation"], count=2) == []
    assert launcher.gpu_slot_args(cfg, ["--resources", "gpu_slots=3"], count=2) == []
    assert launcher.gpu_slot_args(cfg, ["--executor=slurm"], count=2) == []
    assert launcher.gpu_slot_args({"device": "cpu", "gpu_jobs": 4}, [], count=2) == []


def test_gpu_jobs_reaches_every_run_and_is_checked():
    config = yaml.safe_load(default_config_path().read_text())
    pipe = Pipeline.from_config(load({**config, "gpu_jobs": 3}), check_files=False)
    st = next(iter(pipe.studies))
    assert pipe.run_config(st, pipe.studies[st].runs.iloc[0].to_dict()).gpu_jobs == 3
    with pytest.raises(ConfigError, match="gpu_jobs"):
        load({**config, "gpu_jobs": 0})


@pytest.mark.slow
def test_train_jobs_ask_for_a_gpu_slot_on_cuda(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    p = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                        str(tmp_path), "-n", "--cores", "4", "--resources", "gpu_slots=2", "--config", "device=cuda",
                        "--", "results/depth_stats/summary.parquet"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "gpu_slots=1" in p.stdout


@pytest.mark.parametrize("spec, busy, device", [("cuda", (0,), "cuda:1"), ("auto", (), "cuda:0"),
                                                ("cuda:1", (), "cuda:1")])
def test_the_jobs_gpu_becomes_the_current_device(slots, monkeypatch, spec, busy, device):
    """Streams, a CUDA graph's default capture stream and the context itself are made on "the current
    device": a job on slot k's GPU must make it current, or its work and its capture land on GPU 0."""
    from fakecuda import FakeCuda

    cuda = FakeCuda(monkeypatch, count=2)
    slots(*busy)
    assert devices.resolve_device(spec, gpu_jobs=1) == torch.device(device)
    assert cuda.set_devices == [torch.device(device)] and cuda.current_key == device


def test_the_cpu_sets_no_device(monkeypatch):
    from fakecuda import FakeCuda

    cuda = FakeCuda(monkeypatch)
    assert devices.resolve_device("cpu") == torch.device("cpu") and cuda.set_devices == []
