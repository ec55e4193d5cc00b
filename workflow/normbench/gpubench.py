"""``normbench bench --device cuda``: the training step on a GPU, measured.

For each case (model, batch, pack size) it times the Trainer's own step on synthetic data of
the dataset's shape (nothing downloaded) and prints ms per step and per run-step (a pack's
step trains R runs); the GPU-busy fraction two ways -- the kernels' time from torch.profiler
÷ wall time, and CUDA events around a step queued behind a sleeping kernel (so that the GPU
runs it without waiting for launches) ÷ wall time; TFLOP/s (FLOPs of one step from
torch.utils.flop_counter) and that as a fraction of the device's dense peak for the math each
FLOP runs in (convolutions in cuDNN, matmuls in cuBLAS: TF32 is a separate switch for each);
and the mode each row *really* used -- graph replays, or eager and why.  Then the default
pipeline's wall time on the GPU, and each ``config/experiments/*.yaml``'s GPU-hours estimated
from its real run configs (``estimate``).

On a machine without CUDA the same code measures the CPU (no GPU-busy fraction, no peak):
``normbench gpu-check`` runs it so in its small mode, and the tests do.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Dense peak TFLOP/s by torch.cuda.get_device_name() (vendor datasheets, without sparsity).  Exact
# names: an H100 PCIe or NVL has lower peaks than the SXM part, and a substring would take one for another.
_H100_SXM = {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0}
_NVL = {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}
_A100 = {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}
PEAKS = {
    "NVIDIA H100 80GB HBM3": _H100_SXM,  # SXM5
    "NVIDIA H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "NVIDIA H100 NVL": _NVL,
    "NVIDIA H200": _H100_SXM,  # SXM: the H100's compute, more memory
    "NVIDIA H200 NVL": _NVL,
    "NVIDIA A100-SXM4-40GB": _A100, "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100, "NVIDIA A100 80GB PCIe": _A100,
}


def peak_tflops(device_name: str, math_kind: str) -> float | None:
    """The device's dense peak for ``math_kind`` (bf16, tf32, fp32); None if the device is not in the table."""
    return PEAKS.get(device_name.strip(), {}).get(math_kind)


def math_of(cfg) -> dict[str, str]:
    """The math a run's FLOPs run in, by where they run: convolutions in cuDNN (TF32 unless
    ``torch.backends.cudnn.allow_tf32`` is off), matmuls in cuBLAS (fp32 unless the float32 matmul
    precision is lowered from "highest", its default); bf16 autocast casts both."""
    if cfg.bf16:
        return {"conv": "bf16", "matmul": "bf16"}
    if cfg.dtype != "float32":
        return {"conv": cfg.dtype, "matmul": cfg.dtype}
    return {"conv": "tf32" if torch.backends.cudnn.allow_tf32 else "fp32",
            "matmul": "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"}


def flops_by_kind(counts: dict) -> dict[str, int]:
    """FlopCounterMode's counts of the whole step (``get_flop_counts()["Global"]``) as convolution and
    matmul FLOPs (the counter counts nothing else)."""
    out = {"conv": 0, "matmul": 0}
    for op, n in counts.items():
        out["conv" if "conv" in str(op) else "matmul"] += int(n)
    return out


def fraction_of_peak(flops: dict[str, int], maths: dict[str, str], seconds: float, device_name: str) -> float | None:
    """The step's time at the device's peaks (each kind of FLOP at the peak of its math) ÷ its measured time."""
    at_peak = 0.0
    for kind, n in flops.items():
        if not n:
            continue
        peak = peak_tflops(device_name, maths[kind])
        if peak is None:
            return None
        at_peak += n / (peak * 1e12)
    return at_peak / seconds if seconds > 0 else None


# -- the GPU-hours of a config, from its real runs -------------------------------------------------

# Settings that do not change what one step costs (they change how many steps, or which ones, a run
# trains: plan_steps counts those).  Everything else is part of a cost key.
COST_FREE = {"study", "lr", "seed", "steps", "epochs", "eval_every", "eval_examples", "target_acc", "diverge_loss",
             "probe_every", "probe_at", "rel_loss_steps", "checkpoint_every", "checkpoint_minutes", "warmup_steps",
             "schedule_milestones", "schedule_gamma", "momentum", "weight_decay", "adam_betas", "init", "init_std",
             "device", "data_dir", "threads", "gpu_jobs", "runner"}


def cost_key(cfg) -> str:
    return json.dumps({k: v for k, v in cfg.to_dict().items() if k not in COST_FREE}, sort_keys=True, default=str)


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


def why_eager_on_cuda(cfg) -> str | None:
    """Why ``cfg``'s steps would train eagerly on a GPU (graphstep.why_eager, on the meta device)."""
    from .data import DATASETS
    from .graphstep import why_eager
    from .models import build_network

    spec = DATASETS.get(cfg.dataset)
    with torch.device("meta"):
        model = build_network(cfg, spec.input_shape, spec.num_outputs)
    return why_eager(cfg, torch.device("cuda"), model)


def probe_steps(cfg, steps: int) -> int:
    """How many of a run's ``steps`` are probe steps (probing.due)."""
    if not cfg.probes:
        return 0
    n = (steps - 1) // cfg.probe_every + 1 if cfg.probe_every else 0
    extra = {s for s in cfg.probe_at if s < steps}
    if "rel_loss" in cfg.probes:
        extra |= set(range(min(cfg.rel_loss_steps, steps)))
    return n + len({s for s in extra if not (cfg.probe_every and s % cfg.probe_every == 0)})


def plan_steps(cfg, steps: int) -> dict[str, int]:
    """How a run's steps train on a GPU: probe steps (eager, probed); eager steps -- every step where the
    run cannot replay a graph, else the warm-up before the first capture (the lr warm-up, which changes
    the lr every step, included), the checked first replay of each capture and the eager step after each
    lr milestone; replayed steps; and evaluations."""
    from .graphstep import WARMUP

    probes = probe_steps(cfg, steps)
    evals = len({0, steps} | set(range(0, steps + 1, cfg.eval_every)))
    if why_eager_on_cuda(cfg) is not None:
        return {"eager": steps - probes, "graph": 0, "probe": probes, "eval": evals}
    changes = len(cfg.schedule_milestones) if cfg.schedule == "step" else 0
    eager = min(steps - probes, max(WARMUP, cfg.warmup_steps) + 1 + 2 * changes)
    return {"eager": eager, "graph": steps - probes - eager, "probe": probes, "eval": evals}


def run_ms(cfg, steps: int, costs: dict[str, float | None]) -> float | None:
    """Milliseconds a run takes by its plan and the measured costs (ms per eager, replayed and probe step,
    per evaluation); None where a cost it needs was not measured."""
    total = 0.0
    for part, n in plan_steps(cfg, steps).items():
        if n:
            ms = costs.get(part)
            if ms is None or not math.isfinite(ms):
                return None
            total += n * ms
    return total


def gpu_hours(runs: list, costs: dict[str, dict]) -> float | None:
    """Σ over ``runs`` [(cfg, steps)] of each run's time by its plan and the costs of its cost key, in
    hours; None if a cost is missing.  Runs alone: a vectorized pack trains faster (an upper bound)."""
    total = 0.0
    for cfg, steps in runs:
        ms = run_ms(cfg, steps, costs.get(cost_key(cfg), {}))
        if ms is None:
            return None
        total += ms
    return total / 3.6e6


def timing_config(cfg, device, graph: bool, probes: bool = False):
    """The run's own config for timing its steps: its model, norm, batch, optimizer, schedule and
    precision as they are.  Only what the timing must not hit is taken out -- evaluations and probes
    (timed on their own), checkpoints, and the lr warm-up (it would keep a graph from being captured
    within a short timing; plan_steps counts those steps as eager)."""
    from .settings import RunConfig

    d = {**cfg.to_dict(), "device": str(device), "eval_every": 10**9, "checkpoint_every": 0,
         "checkpoint_minutes": 1e9, "warmup_steps": 0, "cuda_graph": "auto" if graph else "off"}
    if not probes:
        d.update(probes=[], probe_every=0, probe_at=[])
    return RunConfig.from_dict(d)


_SYNTHETIC: dict = {}


def synthetic_data(dataset: str, device, n_train: int | None = None, n_test: int | None = None):
    """Random data of the dataset's shape, classes and (unless given) size, resident on the device."""
    from .data import DATASETS, Dataset

    spec = DATASETS.get(dataset)
    n_train, n_test = n_train or spec.n_train, n_test or spec.n_test
    key = (dataset, str(device), n_train, n_test)
    if key not in _SYNTHETIC:
        _SYNTHETIC.clear()  # one dataset at a time: CIFAR-sized data is hundreds of MB
        g = torch.Generator().manual_seed(0)
        n = n_train + n_test
        x = torch.randn(n, *spec.input_shape, generator=g)
        y = (torch.randn(n, spec.num_outputs, generator=g) if spec.task == "regression"
             else torch.randint(0, spec.num_outputs, (n,), generator=g))
        _SYNTHETIC[key] = Dataset(dataset, x[:n_train], y[:n_train], x[n_train:], y[n_train:], spec.task,
                                  spec.num_outputs).to(device)
    return _SYNTHETIC[key]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _advance(t) -> None:
    if t.graph is not None:
        t.graph.step(t)
    else:
        t.train_step(*t.batch())
    t.step += 1


def _timed_ms(fn, device, n: int) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / n * 1e3


def step_costs(cfg, device, steps: int = 10, data=None) -> dict[str, float | None]:
    """Milliseconds per eager step, per replayed step (None where the run cannot replay), per probe step
    (None without probes) and per evaluation of ``cfg``'s own run, timed on ``data`` (default: synthetic
    data of the dataset's shape and size)."""
    from .graphstep import WARMUP
    from .train import Trainer

    data = data if data is not None else synthetic_data(cfg.dataset, device)
    if cfg.threads:  # as the runner sets them
        torch.set_num_threads(cfg.threads)
    eager = Trainer([timing_config(cfg, device, graph=False)], data)
    for _ in range(2):
        _advance(eager)
    costs = {"eager": _timed_ms(lambda: _advance(eager), device, steps),
             "eval": _timed_ms(eager.evaluate, device, 1), "graph": None, "probe": None}
    if cfg.probes:
        probed = Trainer([timing_config(cfg, device, graph=False, probes=True)], data)
        _advance(probed)
        costs["probe"] = _timed_ms(lambda: probed.probing.step(probed, *probed.batch()), device, 2)
        probed = None
    eager = None  # freed before the next one is built
    if torch.device(device).type == "cuda" and why_eager_on_cuda(cfg) is None:
        graph = Trainer([timing_config(cfg, device, graph=True)], data)
        for _ in range(WARMUP + 2):  # the warm-up, the capture and its checked first replay
            _advance(graph)
        if graph.graph is not None and graph.graph.why is None:  # else the run would train eagerly: no graph cost
            costs["graph"] = _timed_ms(lambda: _advance(graph), device, steps)
    return costs


def estimate(runs: list, device, out=None, steps: int = 10, data=None) -> tuple[float | None, dict]:
    """GPU-hours of ``runs`` [(cfg, steps)], each cost key timed once on ``device``."""
    costs: dict[str, dict] = {}
    for cfg, _ in runs:
        key = cost_key(cfg)
        if key in costs:
            continue
        try:
            costs[key] = step_costs(cfg, device, steps, data)
        except Exception as e:  # e.g. a model that does not fit: no estimate, and why
            costs[key] = {}
            if out:
                out(f"      {cfg.model} + {cfg.norm}, batch {cfg.batch_size}: not timed ({type(e).__name__}: {e})")
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return gpu_hours(runs, costs), costs


# -- the bench's table --------------------------------------------------------------------------------


@dataclass
class Case:
    label: str
    run: dict  # RunConfig fields
    members: int = 1  # a vectorized pack of this many runs (lr and seed differ)
    graph: bool = True  # asked for; the row says what was used


def build(case: Case, device):
    from .settings import RunConfig
    from .train import Trainer

    cfgs = [RunConfig.from_dict({**case.run, "lr": 0.01 * (i + 1), "seed": i, "steps": 10**6, "eval_every": 10**6,
                                 "cuda_graph": "auto" if case.graph else "off", "device": str(device)})
            for i in range(case.members)]
    n = max(4 * cfgs[0].batch_size * cfgs[0].workers, 1024)
    lines: list[str] = []
    t = Trainer(cfgs, synthetic_data(cfgs[0].dataset, device, n, 256), progress=lines.append)
    return t, lines


def used_mode(t, replays_before: int, steps: int) -> str:
    """What the timed steps of trainer ``t`` really were: graph replays, or eager steps and why."""
    g = t.graph
    if g is None:
        return f"eager ({t.eager_reason})"
    replays = g.replays - replays_before
    if replays == steps:
        return "graph"
    why = g.why or "not captured yet"
    return f"eager ({why})" if replays == 0 else f"graph in {replays} of {steps} steps ({why})"


def busy_from_events(t, device, ms: float, reps: int = 5) -> float:
    """GPU time of a step with its launches hidden ÷ its wall time: the step is queued behind a sleeping
    kernel long enough for the host to queue all of it, so the GPU runs its kernels back to back, and
    CUDA events around them time the GPU alone."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10**7)
    end.record()
    end.synchronize()
    cycles_per_ms = 10**7 / start.elapsed_time(end)
    times = []
    for _ in range(reps):
        torch.cuda._sleep(int(cycles_per_ms * (2 * ms + 5)))
        start.record()
        _advance(t)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times) / ms


def busy_from_profiler(t, device, steps: int = 10) -> float:
    """The kernels' own time (torch.profiler) ÷ wall time over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        wall = _timed_ms(lambda: _advance(t), device, steps) * steps / 1e3
    busy_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
                  for e in prof.key_averages())
    return busy_us / 1e6 / wall


def measure(case: Case, device, steps: int = 50, warmup: int = 10) -> dict:
    """One row of the table: ms per step and per run-step, the GPU-busy fractions (CUDA only), FLOPs,
    TFLOP/s and fraction of peak, and the mode the timed steps really used."""
    from torch.utils.flop_counter import FlopCounterMode

    t, lines = build(case, device)
    for _ in range(warmup):  # cuDNN's choices, the capture and its checked first replay
        _advance(t)
    before = t.graph.replays if t.graph is not None else 0
    ms = _timed_ms(lambda: _advance(t), device, steps)
    mode = used_mode(t, before, steps)
    cuda = torch.device(device).type == "cuda"
    busy_prof = busy_events = None
    if cuda:
        busy_prof = busy_from_profiler(t, device)
        try:  # torch.cuda._sleep is private: a PyTorch without it loses this column, not the row
            busy_events = busy_from_events(t, device, ms)
        except (AttributeError, RuntimeError) as e:
            lines.append(f"busy from CUDA events: not measured ({type(e).__name__}: {e})")
    eager, _ = build(Case(case.label, case.run, case.members, graph=False), device)
    _advance(eager)
    with FlopCounterMode(display=False) as fc:
        eager.train_step(*eager.batch())
    flops = flops_by_kind(fc.get_flop_counts().get("Global", {}))
    total = sum(flops.values())
    maths = math_of(t.cfg)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    return {"case": case.label, "mode": mode, "ms": ms, "run_ms": ms / case.members, "busy_profiler": busy_prof,
            "busy_events": busy_events, "gflop": total / 1e9, "tflops": total / (ms / 1e3) / 1e12,
            "of_peak": fraction_of_peak(flops, maths, ms / 1e3, name) if cuda else None,
            "math": ", ".join(f"{k} {v}" for k, v in maths.items() if flops[k]), "said": " | ".join(lines)}


CIFAR = {"dataset": "cifar10"}
VGG16 = {**CIFAR, "model": "vgg", "model_options": {"layers": "vgg16"}, "norm": "bn", "batch_size": 128}
RESNET20 = {**CIFAR, "model": "resnet_cifar", "model_options": {"depth": 20}, "norm": "bn", "batch_size": 2,
            "workers": 4, "optimizer": "momentum"}
DIGITS_CNN = {"dataset": "digits", "model": "vgg", "model_options": {"layers": [16, 16, "M", 32, 32, "M"]},
              "norm": "bn", "batch_size": 32}
CASES = [
    Case("VGG-16 + BN, b128, fp32", VGG16),
    Case("VGG-16 + BN, b128, bf16 + channels_last", {**VGG16, "bf16": True, "channels_last": True}),
    *[Case(f"ResNet-20 + BN, 4 workers × 2, {'pack of 5' if m > 1 else 'solo'}{', eager' if not g else ''}",
           RESNET20, members=m, graph=g) for m in (1, 5) for g in (False, True)],
    *[Case(f"digits CNN + BN, b32, {'pack of 15' if m > 1 else 'solo'}", DIGITS_CNN, members=m) for m in (1, 15)],
]
SMALL_CASES = [Case("digits CNN + BN, b32, solo", DIGITS_CNN), Case("digits CNN + BN, b32, pack of 3", DIGITS_CNN, 3)]
HEADER = (f"    {'case':<44} {'ms/step':>8} {'ms/run-step':>11} {'busy(prof)':>10} {'busy(events)':>12} "
          f"{'TFLOP/s':>8} {'of peak':>8}  math; mode")


def _f(v, fmt: str, width: int) -> str:
    return format(v, fmt).rjust(width) if v is not None else "–".rjust(width)


def row_text(r: dict) -> str:
    return (f"    {r['case']:<44} {r['ms']:>8.2f} {r['run_ms']:>11.2f} {_f(r['busy_profiler'], '.2f', 10)} "
            f"{_f(r['busy_events'], '.2f', 12)} {r['tflops']:>8.3g} {_f(r['of_peak'], '.1%', 8)}  "
            f"{r['math']}; {r['mode']}")


def table(cases: list[Case], device, steps: int, out=print) -> list[dict]:
    out(HEADER)
    rows = []
    for case in cases:
        r = measure(case, device, steps=steps)
        out(row_text(r))
        rows.append(r)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return rows


def experiment_hours(device, out) -> None:
    """GPU-hours of each experiment config from its real run configs (gpubench.estimate)."""
    from .config import default_config_path

    for path in sorted((default_config_path().parent / "experiments").glob("*.yaml")):
        try:
            runs = runs_of(path)
        except Exception as e:  # a config needing files or names this install lacks
            out(f"    {path.name:<34} –  ({type(e).__name__}: {e})")
            continue
        h, costs = estimate(runs, device, out)
        out(f"    {path.name:<34} {len(runs):>5} runs, {len(costs):>3} step kinds timed  "
            + (f"{h:8.1f} GPU-hours" if h is not None else "–"))


def main(args, out=print) -> int:
    from .config import default_config_path, load
    from .devices import gpu_slots
    from .launcher import pipeline_fraction

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    out(f"normbench bench --device cuda — {name}, torch {torch.__version__}")
    out("(a) training steps on synthetic data of the dataset's shape (the Trainer's own step; busy: the GPU's "
        "share of the wall time, from the profiler's kernel times and from CUDA events; mode: what the timed "
        "steps really were)")
    table(CASES[:3] if args.quick else CASES, device, steps=10 if args.quick else 50, out=out)
    if args.quick:
        out("(b), (c): skipped in quick mode")
        return 0
    slots = gpu_slots({**load(default_config_path()), "device": "cuda"})
    st = pipeline_fraction(cores=os.cpu_count(),
                           extra=["--config", "device=cuda", "--resources", f"gpu_slots={slots}"])
    out(f"(b) default pipeline on the GPU (--config device=cuda, {slots} GPU slots), fresh run: Snakemake wall "
        f"{st['wall_s']:.0f} s, {st['runs']} runs, CPU useful-compute fraction {st['fraction']:.2f} on "
        f"{st['cores']} cores")
    out("(c) estimated GPU-hours of each experiment (each run's own config: eager, replayed and probe steps, "
        "evaluations, each kind timed; runs alone: packs are faster):")
    experiment_hours(device, out)
    return 0

