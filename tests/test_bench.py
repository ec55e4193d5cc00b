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
