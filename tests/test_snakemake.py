"""The Snakemake pipeline: dry-runs of every shipped config, lint, a tiny real run."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from normbench.store import METRICS_SCHEMA, SUMMARY_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
CONFIGS = [ROOT / "config/config.yaml"] + sorted((ROOT / "config/experiments").glob("*.yaml"))

TINY = {
    "device": "cpu", "threads": 1,
    "norms": {"bn": {"type": "bn"}, "gn": {"type": "gn", "options": {"groups": 4}}},
    "models": {"tiny": {"type": "vgg", "options": {"layers": [8, "M"]}}},
    "train": {"steps": 20, "eval_every": 10},
    "studies": {
        "lr_bs_sweep": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn", "gn"],
                                 "batch_size": [16], "lr": ["1e-2", 0.1], "seed": [0, 1]}},
    },
}


def run_snakemake(workdir: Path, *args, timeout=600):
    return subprocess.run(SNAKEMAKE + ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
                                       *args], capture_output=True, text=True, timeout=timeout)


def workdir_with(tmp_path: Path, config: dict) -> Path:
    """A working directory holding config/config.yaml, as a user's checkout would."""
    (tmp_path / "config").mkdir(parents=True, exist_ok=True)
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_dry_run_every_shipped_config(config, tmp_path):
    args = ["-n", "--quiet", "rules"]
    if config.name != "config.yaml":
        args += ["--configfile", str(config)]
    shutil.copytree(ROOT / "config", tmp_path / "config")
    p = run_snakemake(tmp_path, *args, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "train" in p.stdout  # the DAG has training jobs


def test_experiment_configfile_replaces_the_default(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    p = run_snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config/experiments/bjorck_resnet110.yaml"))
    assert p.returncode == 0, p.stderr
    assert "results/bjorck/summary.parquet" in p.stdout
    assert "results/lr_bs_sweep" not in p.stdout  # the default's studies are not merged in


def test_lint_is_clean(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    p = run_snakemake(tmp_path, "--lint", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Lints for" not in p.stdout + p.stderr


def test_bad_config_fails_before_any_job(tmp_path):
    bad = {**TINY, "studies": {"lr_bs_sweep": {"grid": {**TINY["studies"]["lr_bs_sweep"]["grid"],
                                                         "norm": ["bn", "batchnorm"]}}}}
    p = run_snakemake(workdir_with(tmp_path, bad), "--cores", "1")
    assert p.returncode != 0
    assert "studies.lr_bs_sweep.grid.norm: 'batchnorm' is neither a norms entry nor a registry type" in p.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path):
    wd = workdir_with(tmp_path, TINY)
    p = run_snakemake(wd, "--cores", "2", "results/lr_bs_sweep/summary.parquet")
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"8 runs trained, .* useful-compute fraction \d\.\d\d", p.stdout + p.stderr)
    summary = pq.read_table(wd / "results/lr_bs_sweep/summary.parquet", partitioning=None)
    metrics = pq.read_table(wd / "results/lr_bs_sweep/metrics.parquet", partitioning=None)
    assert summary.schema.equals(SUMMARY_SCHEMA) and metrics.schema.equals(METRICS_SCHEMA)
    s, m = summary.to_pandas(), metrics.to_pandas()
    grid = 2 * 2 * 2  # norm × lr × seed
    assert len(s) == grid and sorted(s.lr.unique()) == [0.01, 0.1] and s.batch_size.dtype == "int64"
    # recorded steps 0, 10, 20: test loss+acc at each, train loss+acc at 10 and 20
    assert len(m) == grid * (3 * 2 + 2 * 2)
    assert m.groupby(["norm", "lr", "seed"]).size().eq(10).all()
    # two packs (bn, gn), each a log and a benchmark
    assert len(list((wd / "logs/train").rglob("*.log"))) == 2
    # a second run has nothing to do
    p = run_snakemake(wd, "--cores", "2", "-n", "results/lr_bs_sweep/summary.parquet")
    assert p.returncode == 0 and "Nothing to be done" in p.stdout + p.stderr
    # the reports and the self-contained HTML report, with the study's category and data-driven captions
    p = run_snakemake(wd, "--cores", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "useful-compute fraction" not in p.stdout + p.stderr  # only reports ran: nothing to measure
    p = run_snakemake(wd, "--cores", "1", "--report", "reports/report.html")
    assert p.returncode == 0, p.stderr[-3000:]
    html = (wd / "reports/report.html").read_text()
    finding = json.loads((wd / "reports/lr_bs_sweep/finding.json").read_text())["finding"]
    escaped = lambda text: json.dumps(text)[1:-1]  # noqa: E731 (the report embeds its data as JSON)
    assert escaped("Learning rate × batch size") in html and escaped("largest lr at which every seed trained") in html
    assert finding.startswith("largest lr at which every seed trained")
    assert "<script src=\"http" not in html  # opens offline
