"""Where each run ran: recorded in its summary (typed), read back per study, and flagged where a
study's runs come from several (instruction set, device, torch) environments -- never part of the
settings fingerprint that decides whether a run is done."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from normbench import provenance as P
from normbench.pack import run_pack
from normbench.publish import build_all
from normbench.runners import Job
from normbench.settings import RunConfig
from normbench.store import ENVIRONMENT_FIELDS, SUMMARY_SCHEMA

import trees

TINY_RUN = {"model": "mlp", "model_options": {"depth": 1, "width": 8}, "steps": 4, "eval_every": 2, "threads": 1}


def test_the_environment_fills_every_column_it_declares():
    env = P.environment(RunConfig.from_dict(TINY_RUN).to_dict(), "cpu")
    assert list(env) == [n for n, _ in ENVIRONMENT_FIELDS] == P.ENVIRONMENT_COLUMNS
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_threads"] == torch.get_num_threads() and env["device_type"] == "cpu"
    assert env["gpu_name"] is None and env["gpu_driver"] is None and env["cudnn_version"] is None  # CPU run
    assert env["python_version"] == ".".join(map(str, sys.version_info[:3]))


def test_a_cuda_run_records_its_gpu_driver_and_cudnn(monkeypatch):
    """CUDA paths with torch.cuda's answers faked (no GPU here)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: f"NVIDIA H100 80GB HBM3 (index {d.index})")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    monkeypatch.setattr(P, "nvidia_driver", lambda: "550.54.15")
    env = P.environment(RunConfig.from_dict(TINY_RUN).to_dict(), "cuda:1")
    assert (env["device_type"], env["gpu_name"], env["gpu_driver"], env["cudnn_version"]) == (
        "cuda", "NVIDIA H100 80GB HBM3 (index 1)", "550.54.15", "91002")


def test_the_cpu_and_driver_are_read_from_what_linux_writes():
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t: fpu\n"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"
    assert P.cpu_name(x86, "x86_64") == "Intel(R) Xeon(R) Platinum 8480+"
    assert P.cpu_name(arm, "aarch64") == "aarch64 (CPU part 0xd0c)"
    assert P.cpu_name("", "aarch64") is None
    assert P.driver_version("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC "
                            "2024\nGCC version:  gcc version 12.3.0") == "550.54.15"
    assert P.driver_version("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  "
                            "(dvs-builder@U16)  Thu Jan 16 2025") == "570.86.15"


def test_git_dirty_follows_the_tracked_files(tmp_path, monkeypatch):
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    monkeypatch.setattr(P, "_HERE", tmp_path)
    assert P._git("status") is None  # not a checkout
    P.git_dirty.cache_clear()
    assert P.git_dirty() is None
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    P.git_dirty.cache_clear()
    assert P.git_dirty() is False
    (tmp_path / "scratch.txt").write_text("untracked changes no result\n")
    P.git_dirty.cache_clear()
    assert P.git_dirty() is False
    (tmp_path / "a.py").write_text("x = 2\n")
    P.git_dirty.cache_clear()
    assert P.git_dirty() is True
    P.git_dirty.cache_clear()


def test_the_data_hash_is_the_data_as_loaded(monkeypatch):
    from normbench import data

    assert P.data_hash("digits", "resources") == P.data_hash("digits", "resources")
    assert P.data_hash("digits", "resources") != P.data_hash("digits16", "resources")
    real = data.DATASETS.get("two_scale")
    P.data_hash.cache_clear()
    base = P.data_hash("two_scale", "resources")

    def one_value_off(data_dir):
        d = real.load(data_dir)
        d.x_test[0, 0] += 1e-6
        return d

    monkeypatch.setitem(data.DATASETS._entries, "two_scale", dataclasses.replace(real, load=one_value_off))
    P.data_hash.cache_clear()
    assert P.data_hash("two_scale", "resources") != base
    P.data_hash.cache_clear()


def test_config_hash_covers_execution_settings_the_fingerprint_leaves_out():
    a, b = RunConfig.from_dict(TINY_RUN), RunConfig.from_dict({**TINY_RUN, "threads": 2, "device": "cpu"})
    assert a.fingerprint() == b.fingerprint()
    assert P.environment(a.to_dict(), "cpu")["config_hash"] != P.environment(b.to_dict(), "cpu")["config_hash"]
    assert P.environment(a.to_dict(), "cpu")["config_hash"] == P.settings_hash(RunConfig.from_dict(TINY_RUN).to_dict())


def test_a_run_written_elsewhere_stays_done(tmp_path, monkeypatch):
    """Provenance is outside the settings fingerprint: a finished run is the same run on another machine."""
    files = {k: tmp_path / f"{k}.parquet" for k in ("summary", "metrics")}
    job = {"config": RunConfig.from_dict(TINY_RUN).to_dict(), "files": {k: str(v) for k, v in files.items()}}
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    run_pack([job], say=lambda m: None)
    written = pq.read_table(files["summary"])
    assert written.schema.equals(SUMMARY_SCHEMA, check_metadata=False)
    assert written.column("cpu_capability")[0].as_py() == "AVX512"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "NO AVX")  # another machine
    assert Job.from_dict(job).done
    said = []
    run_pack([job], say=said.append)
    assert said == ["1 of 1 runs already finished: skipped"]
    assert pq.read_table(files["summary"]).column("cpu_capability")[0].as_py() == "AVX512"


def test_environments_and_mixing():
    base = dict(cpu_model="X", cpu_capability="AVX2", torch_threads=1, device_type="cpu", gpu_name=None,
                gpu_driver=None, torch_version="2.15.0", cuda_version=None, cudnn_version=None, python_version="3.11.7",
                os="Linux", git_rev="abc", git_dirty=False)
    s = pd.DataFrame([base, base, {**base, "torch_threads": 4}])
    envs = P.environments(s)
    assert list(envs.runs) == [2, 1] and list(envs.torch_threads) == ["1", "4"]
    assert P.mixed(s) == []  # threads alone do not flag a study
    s.loc[2, "cpu_capability"] = "AVX512"
    assert P.mixed(s) == ["AVX2 / cpu / 2.15.0", "AVX512 / cpu / 2.15.0"]
    s.loc[2, "cpu_capability"], s.loc[1, "device_type"] = "AVX2", "cuda"
    assert len(P.mixed(s)) == 2
    old = s.drop(columns=["cpu_capability", "git_dirty"])  # files from before these were recorded
    assert P.environments(old).cpu_capability.tolist() == ["unknown"] * len(P.environments(old))
    assert "1 thread)" in P.describe(envs.iloc[0]) and "commit state" not in P.describe(envs.iloc[0])


@pytest.fixture(scope="module")
def two_environments(tmp_path_factory) -> Path:
    """gn_small_batch trained half here and half under ATEN_CPU_CAPABILITY=default (torch's portable
    kernels: a second instruction set); lr_bs_sweep here only."""
    results = tmp_path_factory.mktemp("envs") / "results"
    pipe = trees.planned(results)
    packs = list(pipe.packs("gn_small_batch"))
    trees.train(pipe, "gn_small_batch", packs[:2])
    trees.train(pipe, "gn_small_batch", packs[2:], env={"ATEN_CPU_CAPABILITY": "default"})
    trees.finish(pipe, "lr_bs_sweep")
    from normbench.pipeline import aggregate_study

    aggregate_study(pipe, "gn_small_batch")
    build_all(results, results.parent / "reports", ["gn_small_batch", "lr_bs_sweep"])
    return results


def test_two_environments_are_flagged_in_the_report_and_the_index(two_environments):
    summary = pd.read_parquet(two_environments / "gn_small_batch/summary.parquet")
    here = torch.backends.cpu.get_cpu_capability()
    assert sorted(set(summary.cpu_capability)) == sorted({here, "DEFAULT"})
    reports = two_environments.parent / "reports"
    md = (reports / "gn_small_batch/README.md").read_text()
    flag = f"**Runs from 2 environments** (instruction set / device / torch): {here} / cpu / {torch.__version__}; " \
           f"DEFAULT / cpu / {torch.__version__}"
    assert flag in md and md.index(flag) < md.index("## Claims")
    where = md[md.index("## Where the runs ran"):]
    assert f"- 6 runs: " in where and f"({here}, 1 thread)" in where and "(DEFAULT, 1 thread)" in where
    single = (reports / "lr_bs_sweep/README.md").read_text()
    assert "Runs from" not in single and "## Where the runs ran" in single
    finding = json.loads((reports / "gn_small_batch/finding.json").read_text())
    assert finding["runs"] == 12 and len(finding["mixed"]) == 2
    index = (reports / "index.md").read_text()
    assert index.index("**Runs from several environments**") < index.index("| study")
    assert "in gn_small_batch (" in index and "lr_bs_sweep (" not in index.split("| study")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in index[index.index("## Where the runs ran"):].splitlines() if line.startswith("|")][2:]
    assert [(r[0], r[1], f"({here}," in r[2]) for r in rows] == [("18", "gn_small_batch, lr_bs_sweep", True),
                                                                 ("6", "gn_small_batch", False)]
