"""``normbench gpu-check`` (``make gpu-check``): one prepared command that measures a GPU, writing one folder.

1. the bench: ms per step and per run-step, the GPU-busy fraction (profiler and CUDA events), TFLOP/s and
   the fraction of the device's peak, and the mode each row really used (gpubench.py);
2. the default pipeline on the GPU (``device: cuda``), its wall time, and its verdicts beside those of a
   CPU results folder given to it (``normbench compare``: they must agree);
3. a timed slice of the real-data tier -- the GN table (the study with per-worker batches) at one seed, trained for as many
   epochs as fit its time budget -- and the whole tier's GPU-hours: each of the tier's kinds of step
   timed, every run's time summed by its plan (gpubench.estimate), scaled by what the slice measured
   against its own estimate.

Without CUDA (or with ``--small``) it runs the same code on the CPU in a small mode -- a few digits
steps for the bench, a tiny pipeline, the GN table's smallest batch for two steps -- and says what it
skipped and what a GPU run adds.  On one GPU the whole check is sized for about 8 minutes.
"""

from __future__ import annotations

import math
import os
from collections import Counter
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from . import gpubench
from .config import default_config_path, read_yaml
from .errors import ConfigError, DataError
from .store import write_text

TIER = "realdata_fashion_mnist.yaml"
SLICE_EPOCHS = (3, 2, 1, 0.5, 0.25)  # the most of these that fit the slice's budget
SMALL_STEPS = 2
# the small mode's pipeline: one claim on digits, a few seconds of training
def tiny_config() -> dict:
    """The small mode's pipeline: a few tiny runs on digits under the first study that trains with SGD (its
    claims need not apply: the verdicts are compared, whatever they are), a few seconds of training."""
    from .studies import STUDIES

    study = min(name for name, st in STUDIES.items() if st.runner == "sgd")
    return {"device": "cpu", "threads": 1, "max_seeds": 0,
            "models": {"tiny": {"type": "vgg", "options": {"layers": [8, "M"]}}},
            "train": {"steps": 20, "eval_every": 10},
            "studies": {study: {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn", "none"],
                                         "batch_size": [16], "lr": [0.1, 1.0], "seed": [0, 1]}}}}


class Report:
    """Lines printed as they come and kept for ``summary.md``; the folder's tables."""

    def __init__(self, folder: Path):
        self.folder, self.lines = folder, []
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def table(self, name: str, rows: list[dict] | pd.DataFrame) -> Path:
        path = self.folder / name
        write_text(pd.DataFrame(rows).to_csv(index=False), path)
        return path

    def save(self) -> Path:
        path = self.folder / "summary.md"
        write_text("```\n" + "\n".join(self.lines) + "\n```\n", path)
        return path


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# -- 1. the bench -----------------------------------------------------------------------------------


def bench_part(out: Report, device, small: bool) -> list[dict]:
    cases = gpubench.SMALL_CASES if small else gpubench.CASES
    out(f"1. bench: the Trainer's own step on synthetic data ({len(cases)} cases; busy: the GPU's share of the wall "
        f"time from the profiler and from CUDA events; of peak: each FLOP at the peak of its math)")
    rows = gpubench.table(cases, device, steps=5 if small else 50, out=out)
    out(f"   -> {out.table('bench.csv', rows).name}")
    return rows


# -- 2. the default pipeline -------------------------------------------------------------------------


def pipeline_config(small: bool) -> dict:
    if small:
        return tiny_config()
    return {**read_yaml(default_config_path()), "device": "cuda"}


def pipeline_part(out: Report, small: bool, cores: int, cpu_results: str | None, snakefile: Path) -> dict:
    from .launcher import find_snakefile
    from .pack import pipeline_stats
    from .verdicts import compare

    what = "a tiny pipeline (digits, one claim) on the CPU" if small else "the default pipeline with device: cuda"
    out(f"2. pipeline: {what}, {cores} cores")
    work = out.folder / "pipeline"
    work.mkdir(exist_ok=True)
    config = pipeline_config(small)
    write_text(yaml.safe_dump(config, sort_keys=False), work / "config.yaml")
    snakefile = snakefile or find_snakefile(Path.cwd())
    targets = [f"results/{s}/claims.parquet" for s in config["studies"]] if small else []  # small: no reports
    cmd = [sys.executable, "-m", "normbench.cli", "run", "--configfile", "config.yaml", "--snakefile", str(snakefile),
           "--no-report", "--cores", str(cores), *targets]
    start, t0 = time.time(), time.perf_counter()
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    write_text(p.stdout + p.stderr, work / "snakemake.log")
    if p.returncode != 0:
        out(f"   the pipeline failed (exit {p.returncode}); its log: {work / 'snakemake.log'}")
        out("   " + "\n   ".join((p.stderr or p.stdout).strip().splitlines()[-15:]))
        return {"failed": True}
    st = pipeline_stats(work / "results", wall, cores, since=start - 1, workdir=work) or {"runs": 0, "useful_s": 0.0}
    out(f"   wall {_minutes(wall)} (Snakemake's whole run, start-up included), {st['runs']} runs trained, "
        f"{st['useful_s']:.1f} CPU-seconds in training")
    result = {"wall_s": wall, "runs": st["runs"]}
    eager = Counter(line.split("cuda graph: off (", 1)[1].rsplit(")", 1)[0]
                    for log in (work / "logs").rglob("*.log") for line in log.read_text().splitlines()
                    if "cuda graph: off (" in line)
    for reason, n in eager.most_common():
        out(f"   {n} training log line(s): cuda graph off ({reason})")
    if not cpu_results:
        out("   verdicts not compared: no CPU results folder given (--cpu-results RESULTS of a CPU `normbench run` "
            "of the same config)")
        return result
    try:
        table = compare([work / "results", cpu_results])
    except ConfigError as e:
        out(f"   verdicts not compared: {e}")
        return result
    table.columns = [("this device" if c == str(work / "results") else c) for c in table.columns]
    out.table("verdicts.csv", table.reset_index())
    agree = int(table.same.sum())
    out(f"   verdicts here vs {cpu_results}: {agree} of {len(table)} agree -> verdicts.csv")
    for (study, claim), row in table[~table.same].iterrows():
        out(f"     differs: {study}/{claim}: " + ", ".join(f"{c}: {row[c]}" for c in table.columns if c != "same"))
    result.update(verdicts=len(table), agree=agree)
    return result


# -- 3. the real-data slice and the tier's GPU-hours ------------------------------------------------


def _with(cfg, **changes):
    from .settings import RunConfig

    return RunConfig.from_dict({**cfg.to_dict(), **changes})


def _steps(cfg, data) -> int:
    from .train import total_steps

    return total_steps(cfg, len(data.x_train))


def tier_part(out: Report, device, small: bool, data_dir: str, budget_s: float) -> dict:
    from .data import load_dataset
    from .pack import run_pack
    from .runners.sgd import get_data

    tier_path = default_config_path().parent / "experiments" / TIER
    out(f"3. real-data tier ({TIER}): the GN table at one seed, timed, and the whole tier's GPU-hours")
    tier = read_yaml(tier_path)
    tier["data_dir"] = data_dir
    try:
        data = load_dataset("fashion_mnist", data_dir, device)
    except DataError as e:
        out(f"   skipped: {e}")
        return {"skipped": str(e)}
    runs = gpubench.runs_of(tier)
    runs = [(c, _steps(c, data) if c.dataset == "fashion_mnist" else s) for c, s in runs]
    # the GN table: the study whose runs train data-parallel workers, each normalizing its own small batch
    study = next((c.study for c, _ in runs if c.workers > 1), None)
    if study is None:
        out(f"   skipped: no study of {TIER} trains per-worker batches (the GN table)")
        return {"skipped": "no GN table in the tier"}
    first_seed = min(c.seed for c, _ in runs if c.study == study)
    slice_runs = [c for c, _ in runs if c.study == study and c.seed == first_seed]
    if small:  # the GN table's smallest batch, two steps
        smallest = min(c.batch_size for c in slice_runs)
        slice_runs = [_with(c, epochs=None, steps=SMALL_STEPS, threads=1) for c in slice_runs
                      if c.batch_size == smallest]
    datasets = {}

    def data_for(cfg):
        if cfg.dataset not in datasets:
            datasets[cfg.dataset] = get_data(cfg, device)
        return datasets[cfg.dataset]

    timed = slice_runs if small else [c for c, _ in runs]
    t0 = time.perf_counter()
    costs: dict[str, dict] = {}
    for cfg in timed:
        key = gpubench.cost_key(cfg)
        if key not in costs:
            try:
                costs[key] = gpubench.step_costs(cfg, device, steps=3 if small else 10, data=data_for(cfg))
            except Exception as e:  # a model that does not fit: that kind of step goes untimed, and says why
                costs[key] = {}
                out(f"   {cfg.model} + {cfg.norm}, batch {cfg.batch_size}: not timed ({type(e).__name__}: {e})")
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    out(f"   timed {len(costs)} kinds of step in {_minutes(time.perf_counter() - t0)}")
    out.table("step_costs.csv", [{"key": k, **v} for k, v in costs.items()])

    if small:
        chosen = slice_runs
    else:  # as many epochs as fit the budget, by the estimate
        chosen = []
        for epochs in SLICE_EPOCHS:
            chosen = [_with(c, epochs=epochs) for c in slice_runs]
            est = sum(gpubench.run_ms(c, _steps(c, data), costs[gpubench.cost_key(c)]) or math.inf for c in chosen)
            if est / 1e3 <= budget_s:
                break
    estimate_s = sum((gpubench.run_ms(c, _steps(c, data), costs.get(gpubench.cost_key(c), {})) or math.nan)
                     for c in chosen) / 1e3
    length = (f"{SMALL_STEPS} steps" if small else f"{chosen[0].epochs:g} epochs")
    out(f"   the slice: {len(chosen)} runs of {study} (seed {first_seed}), {length} each "
        f"(estimated {_minutes(estimate_s)})")
    execution = {"data_dir": data_dir, "device": str(device)}
    jobs = [{"config": {**c.to_dict(), **execution},
             "files": {k: str(out.folder / "realdata" / f"{c.model}_{c.norm}_bs{c.batch_size}" / f"{k}.parquet")
                       for k in ("summary", "metrics")}} for c in chosen]
    said: list[str] = []
    t0 = time.perf_counter()
    finished = run_pack(jobs, say=said.append)
    slice_s = time.perf_counter() - t0
    rows = []
    for job in finished:
        c, s = job.config, pd.read_parquet(job.files["summary"])
        rows.append({"model": c.model, "norm": c.norm, "batch_size": c.batch_size, "workers": c.workers,
                     "steps": int(s.steps.iloc[0]),
                     "train_time_s": float(s.train_time_s.iloc[0]), "final_test_acc": float(s.final_test_acc.iloc[0]),
                     "estimate_s": (gpubench.run_ms(c, _steps(c, data), costs.get(gpubench.cost_key(c), {}))
                                    or math.nan) / 1e3})
    out.table("realdata_slice.csv", rows)
    for line in said:
        if "cuda graph" in line:
            out(f"     {line}")
    ratio = slice_s / estimate_s if estimate_s > 0 else math.nan
    out(f"   trained in {_minutes(slice_s)} (estimate × {ratio:.2f}) -> realdata_slice.csv")
    result = {"slice_s": slice_s, "slice_estimate_s": estimate_s}
    if small:
        n_kinds = len({gpubench.cost_key(c) for c, _ in runs})
        out(f"   the whole tier ({len(runs)} runs, {n_kinds} kinds of step): not extrapolated in small mode (its "
            f"steps would be timed on this CPU)")
        return result
    hours = gpubench.gpu_hours(runs, costs)
    if hours is None:
        out("   the whole tier's GPU-hours: – (a kind of step was not timed)")
        return result
    out(f"   the whole tier: {len(runs)} runs, {hours:.2f} GPU-hours by the estimate (runs alone; packs are faster), "
        f"{hours * ratio:.2f} scaled by the slice's measured ÷ estimated time")
    result.update(tier_hours=hours, tier_hours_scaled=hours * ratio)
    return result


# -- the command --------------------------------------------------------------------------------------


GPU_ADDS = [
    "1. the bench on the GPU: VGG-16 (fp32, bf16 + channels_last), ResNet-20 solo and a pack of 5 (eager and "
    "graph), the digits CNN solo and a pack of 15; GPU-busy fractions, TFLOP/s and the fraction of peak",
    "2. the whole default pipeline with device: cuda, its wall time and its verdicts beside the CPU's",
    "3. the GN table at one seed for the epochs that fit the budget, every kind of step of the real-data "
    "tier timed, and the tier's GPU-hours",
]


def main(args) -> int:
    cuda = torch.cuda.is_available()
    small = args.small or not cuda
    device = torch.device("cuda") if cuda and not small else torch.device("cpu")
    folder = Path(args.out)
    out = Report(folder)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU: the CPU"
    mode = " — small mode" + ("" if cuda else " (no CUDA here: torch.cuda.is_available() is False)") if small else ""
    out(f"normbench gpu-check — {name}, torch {torch.__version__}, {os.cpu_count()} cores{mode}")
    cpu_results = args.cpu_results
    if cpu_results is None and not small and any(Path("results").glob("*/claims.parquet")):
        cpu_results = "results"  # this checkout's own results: `make run` on a CPU
    parts, timings = {}, {}
    for part, run in (("bench", lambda: bench_part(out, device, small)),
                      ("pipeline", lambda: pipeline_part(out, small, args.cores or os.cpu_count(), cpu_results,
                                                         Path(args.snakefile) if args.snakefile else None)),
                      ("tier", lambda: tier_part(out, device, small, args.data_dir, args.slice_budget))):
        t0 = time.perf_counter()
        parts[part] = run()
        timings[part] = time.perf_counter() - t0
        out(f"   ({part}: {_minutes(timings[part])})")
        out()
    out(f"gpu-check done in {_minutes(time.perf_counter() - started)}: " + ", ".join(
        f"{k} {_minutes(v)}" for k, v in timings.items()))
    if small:
        out("Skipped in small mode" + ("" if cuda else " (run it on a machine with a GPU)") + "; a GPU run adds:")
        for line in GPU_ADDS:
            out(f"  {line}")
    out(f"Everything above, and the tables, in {folder}/")
    out.save()
    failed = parts["pipeline"].get("failed") or parts["pipeline"].get("agree", 0) != parts["pipeline"].get(
        "verdicts", 0)
    return 1 if failed else 0

