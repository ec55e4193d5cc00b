"""`normbench bench --device cuda`: its pure parts on any machine (the peak table, the GPU-hours
estimate from given step times), the whole quick run where CUDA is present."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from normbench import gpubench

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, kind, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0), ("NVIDIA H100 80GB HBM3", "tf32", 495.0),
    ("NVIDIA H200", "fp32", 67.0), ("NVIDIA A100-SXM4-40GB", "bf16", 312.0), ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
    ("NVIDIA GeForce RTX 3090", "bf16", None),
])
def test_peak_by_device_name(name, kind, peak):
    assert gpubench.peak_tflops(name, kind) == peak


def test_gpu_hours_are_steps_times_step_time():
    """gn_small_batch on CIFAR-10: 100 epochs of 50,000 // (4 workers × N) steps, N = 32 … 2, for
    5 norms × 3 seeds; at 1 ms a step for N = 32 and 2 ms otherwise."""
    runs = gpubench.runs_of(ROOT / "config/experiments/gn_small_batch_cifar10.yaml")
    assert len(runs) == 75
    steps = {n: 100 * (50_000 // (4 * n)) for n in (32, 16, 8, 4, 2)}
    times = {gpubench.step_key(cfg): 1.0 if cfg.batch_size == 32 else 2.0 for cfg, _ in runs}
    by_hand = 15 * (steps[32] * 1.0 + sum(steps[n] * 2.0 for n in (16, 8, 4, 2))) / 1000 / 3600
    assert gpubench.gpu_hours(runs, times) == pytest.approx(by_hand)
    del times[gpubench.step_key(runs[0][0])]
    assert gpubench.gpu_hours(runs, times) is None  # a model not measured: no estimate


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_cuda_prints_the_table():
    p = subprocess.run([sys.executable, "-m", "normbench.cli", "bench", "--device", "cuda", "--quick"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "VGG-16 + BN, b128, bf16 + channels_last" in p.stdout and "ms/run-step" in p.stdout
