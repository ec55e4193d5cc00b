"""`normbench bench --quick` runs and prints its side-by-side ratios (no timing asserted)."""

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_quick_prints_ratios():
    p = subprocess.run([sys.executable, "-m", "normbench.cli", "bench", "--quick"], capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = re.findall(r"^\s+(4|32)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)×\s+([\d.]+)×$", p.stdout, re.M)
    assert [r[0] for r in rows] == ["4", "32"], p.stdout
    for bs, naive, lean, packed, lean_ratio, packed_ratio in rows:
        assert float(packed_ratio) == pytest.approx(int(packed) / int(naive), rel=0.02)  # ratios of what it printed
    assert "(b) default pipeline: skipped in quick mode" in p.stdout
    assert re.search(r"\(c\) probe overhead, .* same run \+\d+%; .* → [+-]\d+%", p.stdout)
