"""``normbench bench --device cuda``: the training step on a GPU, measured.

For each case (model, batch, mode) it times the Trainer's own step -- eager, or
the CUDA-graph replay (graphstep.py) -- on synthetic data of the dataset's shape
(nothing downloaded) and prints ms per step and per run-step (a pack's step
trains R runs), the GPU-busy fraction (CUDA kernel time from torch.profiler ÷
wall time), TFLOP/s (FLOPs of one step from torch.utils.flop_counter) and that
as a fraction of the device's dense peak for the mode's math.  Then the default
pipeline's wall time on the GPU, and each ``config/experiments/*.yaml``'s
GPU-hours estimated from the measured step time of its model at its batch.

The pure parts (peaks, the estimate) are unit-tested on the CPU; the rest needs
a GPU.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Dense peak TFLOP/s by device name (vendor datasheets; no sparsity).  fp32 convolutions
# run as TF32 in cuDNN by default (torch.backends.cudnn.allow_tf32), so an fp32 conv net is
# measured against the TF32 peak.
PEAKS = {  # substring of torch.cuda.get_device_name() -> {math: TFLOP/s}
    "H100": {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0},  # SXM; the PCIe card is lower
    "H200": {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def peak_tflops(device_name: str, math_kind: str) -> float | None:
    """The device's dense peak for ``math_kind`` (bf16, tf32, fp32); None if not in the table."""
    for key, peaks in PEAKS.items():
        if key in device_name:
            return peaks.get(math_kind)
    return None


def math_of(cfg) -> str:
    """The math a run's convolutions use: bf16 under autocast, else TF32 if cuDNN allows it."""
    if cfg.bf16:
        return "bf16"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


def step_key(cfg) -> tuple:
    """What a step's time depends on, as far as the estimate goes."""
    import json

    return (cfg.model_kind, json.dumps(cfg.model_options, sort_keys=True), cfg.norm_kind,
            json.dumps(cfg.norm_options, sort_keys=True), cfg.dataset, cfg.batch_size, cfg.workers, cfg.bf16,
            cfg.channels_last)


def runs_of(path: str | Path) -> list:
    """Every run config of an experiment file, with the steps it trains."""
    from .data import DATASETS
    from .pipeline import load_pipeline
    from .train import total_steps

    pipe = load_pipeline(path, check_files=False)
    out = []
    for name, st in pipe.studies.items():
        for row in st.runs.to_dict("records"):
            cfg = pipe.run_config(name, row)
            if cfg.runner == "sgd":  # the others take no GPU time worth counting
                out.append((cfg, total_steps(cfg, DATASETS.get(cfg.dataset).n_train)))
    return out


def gpu_hours(runs: list, step_ms: dict) -> float | None:
    """Σ steps × measured solo step time over ``runs`` [(cfg, steps)], in hours; None if a
    step time is missing (packs train faster than their runs solo: an upper bound)."""
    total = 0.0
    for cfg, steps in runs:
        ms = step_ms.get(step_key(cfg))
        if ms is None or not math.isfinite(ms):
            return None
        total += steps * ms
    return total / 3.6e6


# -- measuring (needs CUDA) ---------------------------------------------------------


@dataclass
class Case:
    label: str
    run: dict  # RunConfig fields
    members: int = 1  # a vectorized pack of this many runs (lr and seed differ)
    graph: bool = False


def synthetic_data(dataset: str, batch: int, device):
    """Random data of the dataset's shape and classes, resident on the device (no download)."""
    from .data import DATASETS, Dataset

    spec = DATASETS.get(dataset)
    n = max(4 * batch, 1024)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *spec.input_shape, generator=g)
    if spec.task == "regression":
        y = torch.randn(n, spec.num_outputs, generator=g)
    else:
        y = torch.randint(0, spec.num_outputs, (n,), generator=g)
    return Dataset(dataset, x[: n - 256], y[: n - 256], x[n - 256:], y[n - 256:], spec.task,
                   spec.num_outputs).to(device)


def build(case_run: dict, members: int, graph: bool, device):
    from .settings import RunConfig
    from .train import Trainer

    lrs = [0.01 * (i + 1) for i in range(members)]
    cfgs = [RunConfig.from_dict({**case_run, "lr": lr, "seed": i, "steps": 10**6, "eval_every": 10**6,
                                 "cuda_graph": "auto" if graph else "off", "device": str(device)})
            for i, lr in enumerate(lrs)]
    data = synthetic_data(cfgs[0].dataset, cfgs[0].batch_size * cfgs[0].workers, device)
    return Trainer(cfgs, data)


def _advance(t) -> None:
    if t.graph is not None:
        t.graph.step()
    else:
        t.train_step(*t.batch())
    t.step += 1


def step_ms(t, device, steps: int, warmup: int) -> float:
    """Milliseconds per step of trainer ``t`` after ``warmup`` steps (cuDNN's choices, the graph's capture)."""
    for _ in range(warmup):
        _advance(t)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        _advance(t)
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps * 1e3


def measure(case: Case, device, steps: int = 50, warmup: int = 10) -> dict:
    """ms/step, GPU-busy fraction and FLOPs of one step of ``case``."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    t = build(case.run, case.members, case.graph, device)
    ms = step_ms(t, device, steps, warmup)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        w0 = time.perf_counter()
        for _ in range(10):
            _advance(t)
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - w0
    busy_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
                  for e in prof.key_averages())
    eager = build(case.run, case.members, False, device)
    _advance(eager)
    with FlopCounterMode(display=False) as fc:
        eager.train_step(*eager.batch())
    flops = fc.get_total_flops()
    return {"ms": ms, "run_ms": ms / case.members, "busy": busy_us / 1e6 / wall, "flops": flops,
            "tflops": flops / (ms / 1e3) / 1e12, "math": math_of(t.cfg)}


CIFAR = {"dataset": "cifar10"}
CASES = [
    Case("VGG-16 + BN, b128, fp32", {**CIFAR, "model": "vgg", "model_options": {"layers": "vgg16"},
                                     "norm": "bn", "batch_size": 128}, graph=True),
    Case("VGG-16 + BN, b128, bf16 + channels_last", {**CIFAR, "model": "vgg", "model_options": {"layers": "vgg16"},
                                                     "norm": "bn", "batch_size": 128, "bf16": True,
                                                     "channels_last": True}, graph=True),
    *[Case(f"ResNet-20 + BN, 4 workers × 2, {'pack of 5' if m > 1 else 'solo'}, {'graph' if g else 'eager'}",
           {**CIFAR, "model": "resnet_cifar", "model_options": {"depth": 20}, "norm": "bn", "batch_size": 2,
            "workers": 4, "optimizer": "momentum"}, members=m, graph=g)
      for m in (1, 5) for g in (False, True)],
    *[Case(f"digits CNN + BN, b32, {'pack of 15' if m > 1 else 'solo'}, graph",
           {"dataset": "digits", "model": "vgg", "model_options": {"layers": [16, 16, "M", 32, 32, "M"]},
            "norm": "bn", "batch_size": 32}, members=m, graph=True) for m in (1, 15)],
]


def experiment_hours(device, out) -> None:
    """GPU-hours of each experiment config from its models' measured solo step times."""
    from .config import default_config_path

    times: dict = {}
    for path in sorted((default_config_path().parent / "experiments").glob("*.yaml")):
        try:
            runs = runs_of(path)
        except Exception as e:  # a config needing files or names this install lacks
            out(f"    {path.name:<34} –  ({type(e).__name__}: {e})")
            continue
        for cfg, _ in runs:
            key = step_key(cfg)
            if key not in times:
                run = {k: getattr(cfg, k) for k in ("model", "model_type", "model_options", "norm", "norm_type",
                                                    "norm_options", "dataset", "batch_size", "workers", "bf16",
                                                    "channels_last", "placement", "activation", "init")}
                try:
                    times[key] = step_ms(build(run, 1, True, device), device, steps=10, warmup=5)
                except Exception:  # e.g. a model that does not fit: no estimate
                    times[key] = float("nan")
                torch.cuda.empty_cache()
        h = gpu_hours(runs, times)
        out(f"    {path.name:<34} {len(runs):>5} runs  " + (f"{h:8.1f} GPU-hours" if h is not None else "–"))


def main(args, out=print) -> int:
    from .launcher import pipeline_fraction
    from .config import default_config_path, load
    from .devices import gpu_slots

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    out(f"normbench bench --device cuda — {name}, torch {torch.__version__}")
    out(f"(a) training steps on synthetic data of the dataset's shape (the Trainer's own step; graph = one CUDA "
        f"graph replay)")
    out(f"    {'case':<52} {'ms/step':>8} {'ms/run-step':>11} {'GPU busy':>8} {'TFLOP/s':>8} {'of peak':>8}")
    cases = CASES[:3] if args.quick else CASES
    for case in cases:
        r = measure(case, device, steps=10 if args.quick else 50)
        peak = peak_tflops(name, r["math"])
        of_peak = f"{r['tflops'] / peak:7.1%}" if peak else "       –"
        out(f"    {case.label:<52} {r['ms']:>8.2f} {r['run_ms']:>11.2f} {r['busy']:>8.2f} {r['tflops']:>8.1f} "
            f"{of_peak} ({r['math']})")
    if args.quick:
        out("(b), (c): skipped in quick mode")
        return 0
    slots = gpu_slots({**load(default_config_path()), "device": "cuda"})
    st = pipeline_fraction(cores=os.cpu_count(),
                           extra=["--config", "device=cuda", "--resources", f"gpu_slots={slots}"])
    out(f"(b) default pipeline on the GPU (--config device=cuda, {slots} GPU slots), fresh run: Snakemake wall "
        f"{st['wall_s']:.0f} s, {st['runs']} runs, CPU useful-compute fraction {st['fraction']:.2f} on "
        f"{st['cores']} cores")
    out("(c) estimated GPU-hours of each experiment (Σ steps × solo step time of its model at its batch; "
        "packs are faster):")
    experiment_hours(device, out)
    return 0
