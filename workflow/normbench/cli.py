"""normbench: what normalization layers do to training, measured.

Commands: train one run, download a dataset, aggregate run files into per-study
Parquet, rebuild the claims and reports from results (also from unfinished ones),
run the pipeline with its progress, tell how far a results folder got, export
runs to TensorBoard, benchmark the training loop.  The whole pipeline runs
through Snakemake (see the README).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import ConfigError, DataError, IncompleteRun


def _progress(prefix: str = ""):
    t0 = time.perf_counter()

    def say(msg: str):
        print(f"[{time.perf_counter() - t0:7.1f}s] {prefix}{msg}", file=sys.stderr, flush=True)

    return say


def _parse_set(items: list[str]) -> dict:
    from .config import key_values

    return key_values(items, "--set")


def cmd_train(args) -> int:
    from .runners import RUNNERS, train
    from .settings import RunConfig
    from .train import Preempted

    overrides = _parse_set(args.set)
    cfg = RunConfig.from_yaml(args.config, overrides) if args.config else RunConfig.from_dict(overrides)
    RUNNERS.get(cfg.runner).check(cfg)
    out = Path(args.out)
    say = _progress()
    say(f"training {cfg.model} / {cfg.norm} on {cfg.dataset}: lr {cfg.lr}, batch {cfg.batch_size}, seed {cfg.seed}")
    try:
        res = train(cfg, {k: out / f"{k}.parquet" for k in ("summary", "metrics")},
                    Path(args.checkpoint_dir) if args.checkpoint_dir else None, say)
    except Preempted as e:
        say(str(e))
        return 143
    s = res.summary
    say(f"done: final test acc {s['final_test_acc']:.4f}, loss {s['final_test_loss']:.4g}, diverged {s['diverged']}, "
        f"collapsed {s['collapsed']}, {s['wall_time_s']:.1f}s -> {out}/summary.parquet")
    return 0


def cmd_download(args) -> int:
    from .mirrors import SOURCES, download

    for name in args.names:
        if name not in SOURCES:
            raise ConfigError(f"dataset {name!r} is not downloadable; choose from {', '.join(SOURCES)}")
        download(name, args.data_dir)
        print(f"{name}: downloaded and verified under {args.data_dir}/{name}")
    return 0


def cmd_aggregate(args) -> int:
    from .config import default_config_path
    from .pipeline import aggregate_study, load_pipeline

    pipe = load_pipeline(args.config or default_config_path(), args.results, check_files=False)
    for name in args.studies or list(pipe.studies):
        if name not in pipe.studies:
            raise ConfigError(f"study {name!r} is not enabled in the config; enabled: {', '.join(pipe.studies)}")
        n_runs, n_rows = aggregate_study(pipe, name)
        print(f"{name}: {n_runs} runs, {n_rows} metric rows -> {args.results}/{name}/")
    return 0


def cmd_report(args) -> int:
    from .publish import build_all

    for path in build_all(args.results, args.out, args.studies):
        print(path)
    return 0


def cmd_run(args, extra: list[str]) -> int:
    from .launcher import run

    return run(args.configfile, args.snakefile, extra, report=not args.no_report,
               progress_every=args.progress_every or None)


def cmd_evaluate(args, extra: list[str]) -> int:
    from .evaluate import parse_options, run

    return run(args.norm, parse_options(args.options), args.configfile, args.snakefile, extra,
               report=not args.no_report)


def cmd_status(args) -> int:
    from .progress import status_text
    from .runstate import plan_table, read_plan, tree_state

    if args.configfile:
        from .pipeline import load_pipeline

        plan = plan_table(load_pipeline(args.configfile, check_files=False))
    else:
        plan = read_plan(args.results)
        if plan is None:
            raise ConfigError(f"{args.results}/plan.parquet is missing: no `normbench run` has started there (or it "
                              f"was made before plans were written); pass --configfile to read the runs from the "
                              f"config")
    if plan.empty:
        raise ConfigError(f"{args.results}: the plan holds no runs")
    print(status_text(args.results, tree_state(args.results, plan), args.jobs, show=len(plan) if args.all else 10),
          end="")
    return 0


def cmd_export(args) -> int:
    from .export import tensorboard

    for path in tensorboard(args.out, args.results):
        print(path)
    return 0


def cmd_leaderboard(args, extra: list[str]) -> int:
    from .evaluate import leaderboard

    return leaderboard(args.configfile, args.snakefile, extra, report=not args.no_report, only=args.norms)


def cmd_compare(args) -> int:
    import pandas as pd

    from .verdicts import compare

    table = compare(args.results)
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_colwidth", 40):
        print(table.to_string())
    print(f"{int(table.same.sum())} of {len(table)} verdicts agree")
    return 0 if table.same.all() else 1


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def cmd_gpu_check(args) -> int:
    from .gpucheck import main as gpu_check_main

    return gpu_check_main(args)


def _arg(*names, **kw):
    return names, kw


# the arguments of the commands that run the workflow
WORKFLOW_ARGS = [_arg("--snakefile", metavar="FILE", help="the workflow (default: ./Snakefile of this checkout)"),
                 _arg("--no-report", action="store_true", help="skip the HTML report")]

# name -> (function, one-line help, description, its arguments); every argument has help text
COMMANDS = {
    "train": (cmd_train, "train one run and write its Parquet files",
              "Train one run (settings: normbench.settings.RunConfig) and write summary.parquet and "
              "metrics.parquet into --out.", [
                  _arg("--config", metavar="FILE", help="YAML file of run settings"),
                  _arg("--set", action="append", metavar="KEY=VALUE",
                       help="set one run setting (repeatable), e.g. --set norm=gn --set lr=0.05"),
                  _arg("--out", default="results/adhoc/run", metavar="DIR", help="folder for the run's two files"),
                  _arg("--checkpoint-dir", metavar="DIR", help="keep a resumable checkpoint here until the run ends")]),
    "download": (cmd_download, "download torchvision datasets (needs network)",
                 "Download, verify and place datasets for the pipeline; on a machine without network, copy the "
                 "files instead (the error says where).", [
                     _arg("names", nargs="+", metavar="NAME", help="cifar10, cifar100, mnist or fashion_mnist"),
                     _arg("--data-dir", default="resources", metavar="DIR", help="where datasets live")]),
    "aggregate": (cmd_aggregate, "aggregate run files into per-study Parquet",
                  "Concatenate every run's files of each study into <results>/<study>/{summary,metrics}.parquet.", [
                      _arg("--config", metavar="FILE", help="the pipeline config (default: the embedded default)"),
                      _arg("--results", default="results", metavar="DIR", help="the pipeline's results folder"),
                      _arg("studies", nargs="*", metavar="STUDY", help="studies to aggregate (default: all enabled)")]),
    "report": (cmd_report, "rebuild claims and reports from results (no training)",
               "Check each study's claims and rebuild its report from <results>/<study>/*.parquet alone, then "
               "the index.", [
                   _arg("--results", default="results", metavar="DIR", help="folder holding <study>/summary.parquet"),
                   _arg("--out", default="reports", metavar="DIR", help="where the reports go"),
                   _arg("studies", nargs="*", metavar="STUDY", help="studies to report (default: every one found)")]),
    "status": (cmd_status, "runs done, resumable and pending in a results folder, and the time left",
               "For a running or interrupted pipeline: per study the runs done, resumable from a checkpoint and "
               "pending (from <results>/plan.parquet, written when the pipeline starts), the time left from the "
               "measured run times, and the runs left by name.", [
                   _arg("results", nargs="?", default="results", metavar="RESULTS", help="the results folder"),
                   _arg("--configfile", metavar="FILE", help="read the planned runs from this config instead"),
                   _arg("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="runs at once for the time left (a local run uses every core)"),
                   _arg("--all", action="store_true", help="list every run left (default: 10 per study)")]),
    "export": (cmd_export, "write a results folder's runs for other tools (TensorBoard)",
               "tensorboard: each run's scalars as TensorBoard event files under OUT/<study>/<run path>, and the "
               "grid as HParams with each run's final metrics (`tensorboard --logdir OUT`: the HParams table and "
               "parallel coordinates show the sweep). Reads the Parquet only; needs the tensorboard package "
               "(`pip install normbench[tensorboard]`; the lock has it).", [
                   _arg("format", choices=["tensorboard"], help="what to write"),
                   _arg("out", metavar="OUT", help="the folder to write (TensorBoard's --logdir)"),
                   _arg("--results", default="results", metavar="DIR", help="the results folder to read")]),
    "run": (cmd_run, "run the pipeline (Snakemake), resuming whatever a killed run left",
            "Check the config, then run the workflow with the default profile and build reports/report.html "
            "(<results>/reports/ beside another results folder, e.g. results-smoke/ for --config smoke=true). "
            "Any further arguments go to Snakemake (e.g. --cores 4, --profile workflow/profiles/slurm, -n, a "
            "target file).", [
                _arg("--configfile", metavar="FILE", help="an experiment config (replaces the embedded default)"),
                _arg("--progress-every", type=float, default=30.0, metavar="SECONDS",
                     help="runs finished out of the config's, and the time left: bars in a terminal, else a line "
                          "this often (0: no progress display)"),
                *WORKFLOW_ARGS]),
    "evaluate": (cmd_evaluate, "a report card for one normalizer beside bn, gn, ln and none",
                 "Measure NORM's properties (seconds), add it beside the baselines (bn, gn, ln, none) to the arm "
                 "each study declares for the card (lr and batch robustness, depth, landscape smoothness; each "
                 "normalizer at its best lr), time and weigh one layer beside them, run it through the pipeline "
                 "under results/evaluate/<tier>/ (shared by every card of the tier: finished baseline runs are "
                 "reused; the same command resumes) and write the report card "
                 "reports/evaluate/<tier>/<norm>/README.md. Further arguments go to Snakemake.", [
                     _arg("norm", metavar="NORM", help="a registry name (gn, in, ...), 'package.module:Class' or "
                                                       "'path/to/file.py:Class'"),
                     _arg("--options", nargs="+", action="extend", metavar="KEY=VALUE",
                          help="the normalizer's options, e.g. --options groups=8 eps=1e-5"),
                     _arg("--configfile", metavar="FILE",
                          help="derive the battery from this config's studies (a real-data or full-scale tier) "
                               "instead of the embedded default"),
                     *WORKFLOW_ARGS]),
    "leaderboard": (cmd_leaderboard, "every registered and every evaluated normalizer on one page",
                    "Grade every built-in normalizer and every one already evaluated on this tier against BN on "
                    "every axis of the report card (training only the runs no card has trained yet), and write "
                    "reports/evaluate/<tier>/leaderboard/ (Markdown, CSV, HTML and a figure), stating its measured "
                    "wall time. Further arguments go to Snakemake.", [
                        _arg("--configfile", metavar="FILE",
                             help="derive the arms from this config's studies (a real-data or full-scale tier) "
                                  "instead of the embedded default"),
                        _arg("--norms", nargs="+", metavar="NORM",
                             help="only these normalizers (ids as on the page; bn, the reference, always)"),
                        *WORKFLOW_ARGS]),
    "compare": (cmd_compare, "every claim's verdict from several results folders side by side",
                "Print each claim's verdict from two or more results folders (another seed list, instruction set, "
                "thread count or device) and exit 1 if any differs.", [
                    _arg("results", nargs="+", metavar="RESULTS", help="results folders of finished runs")]),
    "bench": (cmd_bench, "measure the training loop's speed, side by side in one run",
              "Naive vs lean vs packed training, the default pipeline's useful-compute fraction, and the probes' "
              "overhead; with --device cuda the training step on the GPU (eager and CUDA graph, ms per step, "
              "GPU-busy fraction, TFLOP/s and fraction of peak), the default pipeline on the GPU and each "
              "experiment's GPU-hours.", [
                  _arg("--quick", action="store_true", help="fewer repetitions, no pipeline (for tests)"),
                  _arg("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                       help="what to measure: the CPU, the GPU (without CUDA: says so, measures the CPU), or "
                            "the GPU where there is one")]),
    "gpu-check": (cmd_gpu_check, "measure a GPU in one command, into one folder",
                  "The bench on the GPU (ms per step, GPU-busy fraction, TFLOP/s and fraction of peak, graph or "
                  "eager and why), the default pipeline on the GPU with its wall time and its verdicts beside a "
                  "CPU results folder's, and a timed slice of the real-data tier with the tier's GPU-hours. "
                  "Without CUDA (or with --small) a small version on the CPU, saying what it skipped. Exits 1 if "
                  "the pipeline fails or a verdict differs.", [
                      _arg("--out", default="gpu-check", metavar="DIR", help="the folder it writes"),
                      _arg("--cpu-results", metavar="RESULTS",
                           help="results folder of a CPU run of the same pipeline, to compare verdicts with "
                                "(default: ./results if it holds claims)"),
                      _arg("--small", action="store_true", help="the small CPU-sized version, even with a GPU"),
                      _arg("--cores", type=int, metavar="N", help="cores for the pipeline (default: all)"),
                      _arg("--data-dir", default="resources", metavar="DIR",
                           help="where Fashion-MNIST is, for the real-data slice"),
                      _arg("--slice-budget", type=float, default=150.0, metavar="SECONDS",
                           help="the real-data slice trains as many epochs (3, 2, 1, ½, ¼) as fit this"),
                      _arg("--snakefile", metavar="FILE", help="the workflow (default: ./Snakefile of this checkout)")]),
}
PASSTHROUGH = {"run", "evaluate", "leaderboard"}  # commands whose unknown arguments go on to Snakemake


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: `run --config KEY=VALUE` is Snakemake's --config, not a prefix of our --configfile
    p = argparse.ArgumentParser(prog="normbench", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"normbench {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, (func, help_, description, args) in COMMANDS.items():
        c = sub.add_parser(name, help=help_, description=description, allow_abbrev=False,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        for names, kw in args:
            c.add_argument(*names, **kw)
        c.set_defaults(func=func, passthrough=name in PASSTHROUGH)
    return p


def main(argv=None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        build_parser().parse_args(argv)  # the usual "unrecognized arguments" error
    try:
        return args.func(args, extra) if getattr(args, "passthrough", False) else args.func(args)
    except ConfigError as e:
        print(f"normbench: config error: {e}", file=sys.stderr)
        return 2
    except (DataError, IncompleteRun) as e:
        print(f"normbench: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
