"""`normbench bench --device cuda`: its pure parts on any machine (the peak table, the math each FLOP
runs in, the GPU-hours estimate from the real run configs), its table on the CPU (the mode each row
really used), the whole quick run where CUDA is present."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fakecuda import FakeCuda
from normbench import graphstep, gpubench
from normbench.settings import RunConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, kind, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0), ("NVIDIA H100 80GB HBM3", "tf32", 495.0),
    ("NVIDIA H100 PCIe", "bf16", 756.0), ("NVIDIA H100 PCIe", "fp32", 51.0), ("NVIDIA H100 NVL", "tf32", 418.0),
    ("NVIDIA H200", "fp32", 67.0), ("NVIDIA H200 NVL", "bf16", 835.0),
    ("NVIDIA A100-SXM4-40GB", "bf16", 312.0), ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
    ("NVIDIA GeForce RTX 3090", "bf16", None), ("NVIDIA H100", "bf16", None),  # not a model name: no guess
])
def test_peak_by_exact_device_name(name, kind, peak):
    assert gpubench.peak_tflops(name, kind) == peak


def test_fp32_matmuls_are_not_tf32_unless_cublas_is_allowed_it(monkeypatch):
    """cuDNN's convolutions use TF32 by default, cuBLAS's matmuls do not: an fp32 nn.Linear is fp32 math."""
    fp32, bf16 = RunConfig.from_dict({}), RunConfig.from_dict({"bf16": True})
    precision = torch.get_float32_matmul_precision()
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    try:
        torch.set_float32_matmul_precision("highest")  # PyTorch's default
        assert gpubench.math_of(fp32) == {"conv": "tf32", "matmul": "fp32"}
        assert gpubench.math_of(bf16) == {"conv": "bf16", "matmul": "bf16"}
        torch.set_float32_matmul_precision("high")  # = torch.backends.cuda.matmul.allow_tf32 = True
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        assert gpubench.math_of(fp32) == {"conv": "fp32", "matmul": "tf32"}
    finally:
        torch.set_float32_matmul_precision(precision)


def test_fraction_of_peak_takes_each_flop_at_the_peak_of_its_math():
    """A conv + linear step: its convolution FLOPs counted against the TF32 peak, its matmuls against fp32."""
    from torch.utils.flop_counter import FlopCounterMode

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))
    with FlopCounterMode(display=False) as fc:
        net(torch.randn(2, 1, 8, 8)).sum().backward()
    flops = gpubench.flops_by_kind(fc.get_flop_counts()["Global"])
    conv = 2 * (2 * 4 * 6 * 6 * 9)  # forward: 2 images × 4 maps × 6×6 outputs × 3×3 taps, a multiply-add each
    linear = 2 * 2 * 144 * 10  # forward: 2 × 144 → 10
    assert flops == {"conv": 2 * conv, "matmul": 3 * linear}  # backward: the input's and the weight's gradients
    f = gpubench.fraction_of_peak(flops, {"conv": "tf32", "matmul": "fp32"}, 1e-6, "NVIDIA H100 80GB HBM3")
    assert f == pytest.approx((2 * conv / 495e12 + 3 * linear / 67e12) / 1e-6)
    assert gpubench.fraction_of_peak(flops, {"conv": "tf32", "matmul": "fp32"}, 1e-6, "some GPU") is None


def cfg(**kw):
    return RunConfig.from_dict({"model": "vgg", "model_options": {"layers": [8, "M"]}, "norm": "bn", **kw})


@pytest.mark.parametrize("run, steps, plan", [
    # momentum, step schedule with 3 milestones: warm-up 3, the checked replay, eager + checked after each drop
    (cfg(optimizer="momentum", schedule="step", schedule_milestones=[0.3, 0.6, 0.9], eval_every=500), 2000,
     {"eager": 3 + 1 + 6, "graph": 2000 - 10, "probe": 0, "eval": 5}),
    # probes every 100 and at 10, 25, 50, 75, 150: probe steps are eager, the graph replays between them
    (cfg(probes=["ics", "landscape"], probe_every=100, probe_at=[10, 25, 50, 75, 150, 200], eval_every=200), 1000,
     {"eager": 4, "graph": 1000 - 4 - 15, "probe": 10 + 5, "eval": 6}),
    # Bjorck's relative loss at the first 3 steps (step 0 is periodic too), and an lr warm-up of 400 steps
    (cfg(probes=["rel_loss"], probe_every=50, warmup_steps=400, eval_every=300), 1000,
     {"eager": 401, "graph": 1000 - 401 - 22, "probe": 20 + 2, "eval": 5}),
    (cfg(schedule="cosine", eval_every=100), 300, {"eager": 300, "graph": 0, "probe": 0, "eval": 4}),
    (cfg(norm="noisy_bn", eval_every=100), 300, {"eager": 300, "graph": 0, "probe": 0, "eval": 4}),
    (cfg(cuda_graph="off", probes=["landscape"], probe_every=100), 300, {"eager": 297, "graph": 0, "probe": 3,
                                                                         "eval": 7}),
])
def test_the_plan_counts_the_steps_that_train_eagerly(run, steps, plan, monkeypatch):
    monkeypatch.setattr(graphstep, "_FAILED", [])
    assert gpubench.plan_steps(run, steps) == plan


def test_gpu_hours_follow_each_runs_plan(monkeypatch):
    """gn_small_batch on CIFAR-10: 100 epochs of 50,000 // (4 workers × N) steps, N = 32 … 2, for 5 norms ×
    3 seeds, momentum with the lr ÷10 at three milestones, eval every 1,000 steps; with every kind of
    step costing the same for every structure (eager 3 ms, replayed 1 ms, an evaluation 50 ms)."""
    monkeypatch.setattr(graphstep, "_FAILED", [])
    runs = gpubench.runs_of(ROOT / "config/experiments/gn_small_batch_cifar10.yaml")
    assert len(runs) == 75
    c0 = runs[0][0]
    assert (c0.optimizer, c0.schedule, len(c0.schedule_milestones), c0.eval_every) == ("momentum", "step", 3, 1000)
    costs = {gpubench.cost_key(c): {"eager": 3.0, "graph": 1.0, "eval": 50.0} for c, _ in runs}
    by_hand = 0.0
    for n in (32, 16, 8, 4, 2):
        steps = 100 * (50_000 // (4 * n))
        evals = len({0, steps} | set(range(0, steps + 1, 1000)))
        by_hand += 15 * (10 * 3.0 + (steps - 10) * 1.0 + evals * 50.0)
    assert gpubench.gpu_hours(runs, costs) == pytest.approx(by_hand / 3.6e6)
    del costs[gpubench.cost_key(runs[0][0])]["graph"]
    assert gpubench.gpu_hours(runs, costs) is None  # a cost not measured: no estimate


def test_a_run_that_cannot_replay_is_estimated_from_eager_steps():
    """A cosine schedule trains eagerly on a GPU: its estimate uses the eager step time, never a graph's."""
    run = cfg(schedule="cosine", eval_every=100)
    assert gpubench.run_ms(run, 300, {"eager": 2.0, "graph": 0.5, "eval": 10.0}) == 300 * 2.0 + 4 * 10.0


def test_steps_are_timed_with_the_runs_own_config(monkeypatch):
    """The optimizer, the schedule, the precision and the probes of the run itself -- not a stripped copy."""
    from normbench import train

    built = []
    real = train.Trainer.__init__

    def record(self, cfgs, *a, **k):
        built.append(cfgs[0])
        real(self, cfgs, *a, **k)

    monkeypatch.setattr(train.Trainer, "__init__", record)
    run = cfg(optimizer="adam", lr=0.003, schedule="step", weight_decay=1e-4, probes=["landscape"], probe_every=50,
              warmup_steps=20, steps=500, eval_every=100)
    costs = gpubench.step_costs(run, "cpu", steps=2, data=gpubench.synthetic_data("digits", "cpu", 256, 64))
    assert costs["eager"] > 0 and costs["eval"] > 0 and costs["probe"] > 0 and costs["graph"] is None  # CPU
    for timed in built:
        assert (timed.optimizer, timed.lr, timed.schedule, timed.weight_decay, timed.steps) == ("adam", 0.003, "step",
                                                                                                  1e-4, 500)
    assert [c.probes for c in built] == [[], ["landscape"]]


@pytest.fixture
def capture_in_python(monkeypatch):
    """Graph mode decided as on a GPU, torch.cuda faked, the capture recording the step's Python function."""
    monkeypatch.setattr(graphstep, "_FAILED", [])
    real = graphstep.why_eager
    monkeypatch.setattr(graphstep, "why_eager", lambda cfg, device, model: real(cfg, torch.device("cuda"), model))
    FakeCuda(monkeypatch)
    failing = SimpleNamespace(on=False)

    def record(body, device, stream):
        if failing.on:
            raise RuntimeError("operation not permitted when stream is capturing")
        return SimpleNamespace(replay=body)

    monkeypatch.setattr(graphstep, "capture", record)
    return failing


def test_each_row_says_the_mode_its_steps_really_used(capture_in_python):
    """A case that asks for a graph is labelled by what its timed steps were: replays, or eager and why."""
    case = gpubench.Case("digits CNN + BN, b32, solo", gpubench.DIGITS_CNN)
    assert gpubench.measure(case, "cpu", steps=3, warmup=6)["mode"] == "graph"
    capture_in_python.on = True
    r = gpubench.measure(case, "cpu", steps=3, warmup=6)
    assert r["mode"] == "eager (capture failed: RuntimeError: operation not permitted when stream is capturing)"
    assert "capture failed" in r["said"]


def test_on_the_cpu_a_row_is_eager_with_no_gpu_numbers():
    r = gpubench.measure(gpubench.SMALL_CASES[1], "cpu", steps=2, warmup=1)
    assert r["mode"] == "eager (device cpu is not CUDA)" and r["busy_profiler"] is None and r["of_peak"] is None
    assert r["ms"] > 0 and r["run_ms"] == pytest.approx(r["ms"] / 3) and r["gflop"] > 0
    assert "eager (device cpu is not CUDA)" in gpubench.row_text(r)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_cuda_prints_the_table():
    p = subprocess.run([sys.executable, "-m", "normbench.cli", "bench", "--device", "cuda", "--quick"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "VGG-16 + BN, b128, bf16 + channels_last" in p.stdout and "ms/run-step" in p.stdout
    assert "; graph" in p.stdout  # the VGG-16 rows replay graphs
