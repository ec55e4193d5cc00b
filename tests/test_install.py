"""The package installed from its wheel works outside the checkout; the lock resolves on
Linux x86-64, Linux aarch64 and macOS arm64; requires-python tells the truth."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "envs/requirements.lock"

TINY = {"device": "cpu", "threads": 1, "models": {"tiny": {"type": "vgg", "options": {"layers": [4, "M"]}}},
        "train": {"steps": 4, "eval_every": 2},
        "studies": {"lr_bs_sweep": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn"],
                                             "batch_size": [8], "lr": [0.1], "seed": [0, 1]}}}}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel built from this checkout, unpacked into a scratch folder first on the path; run
    from a folder outside the checkout (the torch & co. of the test environment are reused)."""
    tmp = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    wheel = next((tmp / "dist").glob("normbench-*.whl"))
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp / "site"),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    work = tmp / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp / "site")}
    return {"site": tmp / "site", "work": work, "env": env}


def run(inst, *code_or_args, cli=True):
    cmd = [sys.executable, "-m", "normbench.cli", *code_or_args] if cli else [sys.executable, "-c", *code_or_args]
    return subprocess.run(cmd, cwd=inst["work"], env=inst["env"], capture_output=True, text=True, timeout=600)


def test_the_wheel_carries_the_schema_and_the_default_config(installed):
    p = run(installed, "import normbench, normbench.config as c; print(normbench.__file__); "
                       "print(c.schema_path()); print(c.default_config_path())", cli=False)
    assert p.returncode == 0, p.stderr
    where = [Path(line) for line in p.stdout.split()]
    assert all(str(w).startswith(str(installed["site"])) for w in where), where  # not the checkout's
    assert where[1].name == "config.schema.yaml" and where[2].name == "config.yaml"
    assert yaml.safe_load(where[2].read_text())["studies"]


def test_installed_train_and_aggregate_run_outside_the_checkout(installed):
    p = run(installed, "train", "--set", "model=mlp", "--set", "model_options={depth: 1, width: 8}", "--set",
            "steps=5", "--set", "eval_every=5", "--out", "run")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (installed["work"] / "run/summary.parquet").exists()
    (installed["work"] / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    code = ("from normbench.pipeline import load_pipeline; from normbench.pack import run_pack; "
            "p = load_pipeline('tiny.yaml'); [run_pack(p.pack_jobs(s, k), say=lambda m: None) "
            "for s in p.studies for k in p.packs(s)]")
    p = run(installed, code, cli=False)
    assert p.returncode == 0, p.stderr[-2000:]
    p = run(installed, "aggregate", "--config", "tiny.yaml")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "lr_bs_sweep: 2 runs" in p.stdout and (installed["work"] / "results/lr_bs_sweep/summary.parquet").exists()
    p = run(installed, "--version")
    assert p.returncode == 0 and re.match(r"normbench \d+\.\d+\.\d+", p.stdout)


def test_requires_python_and_readme_agree_with_the_lock():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.11"  # snakemake 9.27, torch 2.15, numpy 2.4, pandas 3.1 need it
    assert "Python ≥ 3.11" in (ROOT / "README.md").read_text()


def _manylinux(arch: str) -> list[str]:
    return [f"manylinux_2_{v}_{arch}" for v in range(39, 16, -1)] + [f"manylinux2014_{arch}", "any"]


PLATFORMS = {  # marker environment, pip's platform tags (every tag such a machine accepts)
    "linux-x86_64": ({"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
                     _manylinux("x86_64")),
    "linux-aarch64": ({"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"},
                      _manylinux("aarch64")),
    "macos-arm64": ({"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
                    [f"macosx_{v}_0_{a}" for v in range(15, 10, -1) for a in ("arm64", "universal2")]
                    + ["macosx_10_9_universal2", "any"]),
}
SDIST_ONLY = {"connection_pool"}  # pure Python, published as a source archive only


def lock_for(env: dict) -> list[str]:
    reqs = []
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            r = Requirement(line)
            if r.marker is None or r.marker.evaluate({**env, "python_version": "3.11", "python_full_version": "3.11.7"}):
                reqs.append(f"{r.name}{r.specifier}")
    return reqs


def test_platform_only_wheels_carry_torchs_markers():
    """What torch itself installs on Linux only (CUDA libraries, triton) is marked so in the lock."""
    mac = {r.split("==")[0].lower() for r in lock_for(PLATFORMS["macos-arm64"][0])}
    linux = {r.split("==")[0].lower() for r in lock_for(PLATFORMS["linux-x86_64"][0])}
    only_linux = linux - mac
    assert only_linux and all(re.match(r"(nvidia-|cuda-|triton)", n) for n in only_linux)
    assert {"torch", "torchvision", "snakemake", "pandas", "pyarrow"} <= mac


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["linux-aarch64", "macos-arm64"])  # Linux x86-64: `make setup` installs it
def test_the_lock_resolves_on(platform, tmp_path):
    env, tags = PLATFORMS[platform]
    reqs = [r for r in lock_for(env) if r.split("==")[0] not in SDIST_ONLY]
    (tmp_path / "reqs.txt").write_text("\n".join(reqs) + "\n")
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--no-deps", "--ignore-installed",
           "--target", str(tmp_path / "t"), "--python-version", "3.11", "--implementation", "cp",
           "--only-binary=:all:", "-r", str(tmp_path / "reqs.txt")] + [a for t in tags for a in ("--platform", t)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PIP_CONSTRAINT": "/dev/null"})
    if p.returncode and ("Network is unreachable" in p.stderr or "Failed to establish" in p.stderr):
        pytest.skip("the package registry is unreachable from here")
    assert p.returncode == 0, p.stderr[-3000:]


def test_the_conda_mirror_pins_what_the_lock_pins():
    lock = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    env = yaml.safe_load((ROOT / "envs/environment.yaml").read_text())
    pins = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert pins == lock
