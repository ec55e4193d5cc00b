"""``normbench bench``: speed measured side by side in one invocation.

(a) runs/hour for the default digits CNN at batch 4 and 32: the naive loop (one
    process per run, DataLoader, ``.item()`` per step), our lean loop (one
    process per run), and our packed loop (one process, 12 runs vectorized);
(b) the default pipeline's useful-compute fraction: the CPU time its runs'
    processes spent training (probes and eval included) ÷ (cores × wall time),
    from a fresh run of the pipeline;
(c) the probe overhead at the default config's interval.

``--device cuda`` measures the GPU instead (gpubench.py).

Timings are noisy on shared machines: compare the ratios printed together,
never numbers from another day.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .config import default_config_path, load
from .launcher import pipeline_fraction

THREADS = 1  # every variant on one thread: the pipeline's default, and a fair comparison
ENV = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
CNN = [16, 16, "M", 32, 32, "M"]  # the digits CNN timed in (a)
STEPS, EVAL_EVERY = 250, 25


def _timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} … failed:\n{p.stderr[-2000:]}")
    return time.perf_counter() - t


def _run_cfg(layers, lr, seed, bs, steps, eval_every) -> dict:
    return {"model": "vgg", "model_options": {"layers": layers}, "norm": "bn", "lr": lr, "seed": seed,
            "batch_size": bs, "steps": steps, "eval_every": eval_every, "threads": THREADS, "device": "cpu"}


def packed_child(spec_path: str) -> None:
    """What the packed variant's process runs: a pack of runs, vectorized."""
    from .pack import run_pack

    spec = json.loads(Path(spec_path).read_text())
    run_pack(spec["jobs"], say=lambda m: None)


def runs_per_hour(layers, bs: int, steps: int, eval_every: int, reps: int, workdir: Path) -> dict:
    lrs, seeds = [0.01, 0.05, 0.2, 1.0], [0, 1, 2]
    py = sys.executable
    naive = [_timed([py, "-m", "normbench.naive", json.dumps(layers), str(lrs[i % 4]), str(i % 3), str(bs),
                     str(steps), str(eval_every)]) for i in range(reps)]
    lean = []
    for i in range(reps):
        cfg = workdir / f"lean{i}.yaml"
        cfg.write_text(yaml.safe_dump(_run_cfg(layers, lrs[i % 4], i % 3, bs, steps, eval_every)))
        lean.append(_timed([py, "-m", "normbench.cli", "train", "--config", str(cfg), "--out",
                            str(workdir / f"lean{bs}_{i}")]))
    jobs = [{"config": {**_run_cfg(layers, lr, s, bs, steps, eval_every), "study": "bench"},
             "files": {k: str(workdir / f"packed{bs}" / f"lr{lr}_s{s}" / f"{k}.parquet") for k in ("summary", "metrics")}}
            for lr in lrs for s in seeds]
    spec = workdir / f"pack{bs}.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    packed = _timed([py, "-c", f"from normbench.bench import packed_child; packed_child({str(spec)!r})"])
    per = {"naive": min(naive), "lean": min(lean), "packed": packed / len(jobs)}  # seconds per run
    return {k: 3600.0 / v for k, v in per.items()}


def probed_run(config: dict):
    """The default config's first conv-net run with landscape probes (BN), and its twin without."""
    import copy

    from .pipeline import Pipeline

    pipe = Pipeline.from_config(config, check_files=False)
    for name, st in pipe.studies.items():
        for row in st.runs.to_dict("records"):
            cfg = pipe.run_config(name, row)
            if "landscape" in cfg.probes and cfg.norm_kind == "bn" and cfg.model_kind == "vgg":
                off = copy.deepcopy(cfg)
                off.probes, off.probe_every = [], 0
                return cfg, off
    raise ValueError("the default config has no probed conv-net run")


def probe_overhead(config: dict, pairs: int = 6, steps: int | None = None) -> dict:
    """One probed run at the default config's interval vs the same run without,
    measured two ways: the probes' own time against the training time of the same
    run (no run-to-run noise), and the wall-time ratio of the two runs, the median
    over pairs timed back to back in alternating order (this machine's run-to-run
    noise is itself ±10%, so one pair, or a ratio of minima, says little)."""
    import statistics

    import torch

    from .runners import train

    torch.set_num_threads(THREADS)
    on, off = probed_run(config)
    if steps:  # quick mode: a shorter run, still probed at its interval
        on.steps = off.steps = steps
    ratios, inside, t_on, t_off = [], [], [], []
    for i in range(pairs):
        t = {}
        for name, cfg in ((("on", on), ("off", off)) if i % 2 == 0 else (("off", off), ("on", on))):
            t0 = time.perf_counter()
            res = train(cfg)
            t[name] = time.perf_counter() - t0
            if name == "on":
                inside.append(res.summary["probe_time_s"] / res.summary["train_time_s"])
        ratios.append(t["on"] / t["off"])
        t_on.append(t["on"])
        t_off.append(t["off"])
    return {"probe_every": on.probe_every, "steps": on.steps, "model": on.model, "study": on.study, "pairs": pairs,
            "t_on": statistics.median(t_on), "t_off": statistics.median(t_off),
            "overhead": statistics.median(ratios) - 1, "inside": statistics.median(inside)}


def pipeline_part(out, cores: int = 2) -> dict:
    """(b): this checkout's pipeline (its config/) run afresh in a scratch folder, measured."""
    st = pipeline_fraction(cores)
    if st is None:
        raise RuntimeError("the pipeline ran but no finished run of it was found: nothing to measure")
    out(f"(b) default pipeline, fresh run on {st['cores']} cores: wall {st['wall_s']:.0f} s, {st['runs']} runs, "
        f"CPU time in training {st['useful_s']:.0f} s → useful-compute fraction {st['fraction']:.2f}")
    return st


def main(args) -> int:
    import torch

    device = getattr(args, "device", "cpu")
    if device in ("cuda", "auto") and torch.cuda.is_available():
        from .gpubench import main as gpu_main

        return gpu_main(args)
    if device == "cuda":
        print("normbench bench --device cuda: no CUDA device here (torch.cuda.is_available() is False); "
              "measuring the CPU instead")
    config = load(default_config_path())
    layers = CNN
    steps, eval_every = (50 if args.quick else STEPS), EVAL_EVERY
    reps = 1 if args.quick else 2
    out = print
    out(f"normbench bench — {platform.node()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{THREADS} thread per run, {'quick' if args.quick else 'full'} mode")
    out(f"(a) digits CNN (vgg {layers}, BN), {steps} steps per run, eval every {eval_every}; "
        f"packed = one process, 4 lrs × 3 seeds vectorized")
    out(f"    {'batch':>5}  {'naive runs/h':>12}  {'lean runs/h':>11}  {'packed runs/h':>13}  "
        f"{'lean/naive':>10}  {'packed/naive':>12}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="normbench-bench-") as tmp:
        for bs in (4, 32):
            r = runs_per_hour(layers, bs, steps, eval_every, reps, Path(tmp))
            results[bs] = r
            out(f"    {bs:>5}  {r['naive']:>12.0f}  {r['lean']:>11.0f}  {r['packed']:>13.0f}  "
                f"{r['lean'] / r['naive']:>9.2f}×  {r['packed'] / r['naive']:>11.2f}×")
    if not args.quick:
        pipeline_part(out)
    else:
        out("(b) default pipeline: skipped in quick mode (run `normbench bench` to measure it)")
    po = probe_overhead(config, pairs=2 if args.quick else 6, steps=200 if args.quick else None)
    out(f"(c) probe overhead, {po['study']} {po['model']} + BN, {po['steps']} steps, probes every {po['probe_every']}: "
        f"probes' time ÷ training time of the same run +{100 * po['inside']:.0f}%; wall time with vs without, "
        f"median of {po['pairs']} alternating pairs: {po['t_on']:.2f} s vs {po['t_off']:.2f} s → "
        f"{100 * po['overhead']:+.0f}%")
    return 0
