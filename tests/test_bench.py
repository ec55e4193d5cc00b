"""`normbench bench --quick` runs and prints its side-by-side ratios (no timing asserted)."""

import re
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_bench_quick_prints_ratios():
    """Without CUDA, --device cuda says so in one line and measures the CPU."""
    no_cuda = not torch.cuda.is_available()
    p = subprocess.run([sys.executable, "-m", "normbench.cli", "bench", "--quick"]
                       + (["--device", "cuda"] if no_cuda else []), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    if no_cuda:
        assert p.stdout.splitlines()[0] == ("normbench bench --device cuda: no CUDA device here "
                                            "(torch.cuda.is_available() is False); measuring the CPU instead")
    rows = re.findall(r"^\s+(4|32)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)×\s+([\d.]+)×$", p.stdout, re.M)
    assert [r[0] for r in rows] == ["4", "32"], p.stdout
    for bs, naive, lean, packed, lean_ratio, packed_ratio in rows:
        assert float(packed_ratio) == pytest.approx(int(packed) / int(naive), rel=0.02)  # ratios of what it printed
    assert "(b) default pipeline: skipped in quick mode" in p.stdout
    assert re.search(r"\(c\) probe overhead, .* same run \+\d+%; .* → [+-]\d+%", p.stdout)


@pytest.mark.slow
def test_the_pipeline_part_runs_in_a_checkout_that_already_has_results(tmp_path, monkeypatch):
    """`make run` then `make bench` in one checkout: part (b) runs the pipeline afresh in a scratch
    folder, and its pack markers name their runs relative to that folder -- not to the checkout, whose
    own older results sit at the same relative paths (they were taken for the new runs, found older
    than the bench's start, and part (b) crashed on a None).  A tiny config stands in for the default."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from normbench import bench

    root = Path(__file__).resolve().parents[1]
    checkout = tmp_path / "checkout"
    (checkout / "config").mkdir(parents=True)
    shutil.copy(root / "Snakefile", checkout / "Snakefile")
    (checkout / "workflow").symlink_to(root / "workflow")
    (checkout / "config/config.yaml").write_text(yaml.safe_dump({
        "device": "cpu", "threads": 1, "max_seeds": 0, "models": {"tiny": {"type": "vgg", "options": {"layers": [4, "M"]}}},
        "train": {"steps": 10, "eval_every": 10},
        "studies": {"lr_bs_sweep": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn"],
                                             "batch_size": [16], "lr": [0.1], "seed": [0, 1]}}}}))
    older = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(checkout / "Snakefile"),
                            "--directory", str(checkout), "--cores", "1", "--quiet", "--",
                            "results/lr_bs_sweep/summary.parquet"], capture_output=True, text=True, timeout=300)
    assert older.returncode == 0, older.stderr[-3000:]
    assert list((checkout / "results").rglob("pack.json"))
    monkeypatch.chdir(checkout)
    printed = []
    st = bench.pipeline_part(printed.append, cores=1)
    assert st["runs"] == 2 and st["useful_s"] > 0
    assert printed[0].startswith("(b) default pipeline, fresh run on 1 cores: wall ")
