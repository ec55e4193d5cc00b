"""``normbench train | download | aggregate | report | bench``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from .errors import ConfigError


def _progress(prefix: str = ""):
    t0 = time.perf_counter()

    def say(msg: str):
        print(f"[{time.perf_counter() - t0:7.1f}s] {prefix}{msg}", file=sys.stderr, flush=True)

    return say


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def cmd_train(args) -> int:
    from .config import RunConfig
    from .train import Preempted, train

    overrides = _parse_set(args.set)
    cfg = RunConfig.from_yaml(args.config, overrides) if args.config else RunConfig.from_dict(overrides)
    out = Path(args.out)
    say = _progress()
    say(f"training {cfg.model} / {cfg.norm} on {cfg.dataset}: lr {cfg.lr}, batch {cfg.batch_size}, seed {cfg.seed}")
    try:
        res = train(cfg, out, args.checkpoint, progress=say)
    except Preempted as e:
        say(str(e))
        return 143
    s = res.summary
    say(f"done: final test acc {s['final_test_acc']:.4f}, loss {s['final_test_loss']:.4g}, "
        f"diverged {s['diverged']}, {s['wall_time_s']:.1f}s -> {out}/summary.parquet")
    return 0


def cmd_download(args) -> int:
    from .data import TORCHVISION, download

    for name in args.names:
        if name not in TORCHVISION:
            raise ConfigError(f"dataset {name!r} is not downloadable; choose from {', '.join(TORCHVISION)}")
        download(name, args.data_dir)
        print(f"{name}: downloaded and verified under {args.data_dir}/{name}")
    return 0


def cmd_aggregate(args) -> int:
    from .pipeline import aggregate_study, load_config

    cfg = load_config(args.config)
    studies = args.studies or list(cfg.studies)
    for name in studies:
        n_runs, n_rows = aggregate_study(cfg, name, args.results)
        print(f"{name}: {n_runs} runs, {n_rows} metric rows")
    return 0


def cmd_report(args) -> int:
    from .reports import build_all

    for path in build_all(args.results, args.out, args.studies):
        print(path)
    return 0


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="normbench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train one run and write its Parquet files")
    t.add_argument("--config", help="YAML file with run settings (see normbench.config.RunConfig)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting (repeatable)")
    t.add_argument("--out", default="results/adhoc/run", help="output folder")
    t.add_argument("--checkpoint", help="resumable checkpoint path (kept until the run finishes)")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("download", help="download torchvision datasets (needs network)")
    d.add_argument("names", nargs="+")
    d.add_argument("--data-dir", default="resources")
    d.set_defaults(func=cmd_download)

    a = sub.add_parser("aggregate", help="aggregate run folders into per-study Parquet")
    a.add_argument("--config", default="config/config.yaml")
    a.add_argument("--results", default="results")
    a.add_argument("studies", nargs="*")
    a.set_defaults(func=cmd_aggregate)

    r = sub.add_parser("report", help="rebuild reports/ from results/<study>/*.parquet (no training)")
    r.add_argument("--results", default="results")
    r.add_argument("--out", default="reports")
    r.add_argument("studies", nargs="*")
    r.set_defaults(func=cmd_report)

    b = sub.add_parser("bench", help="measure naive vs lean vs packed training, pipeline efficiency, probe cost")
    b.add_argument("--quick", action="store_true", help="fewer repetitions (for tests)")
    b.add_argument("--results", default="results", help="where a finished pipeline run left its Parquet")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"normbench: config error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # data errors etc.: one clear line, not a traceback
        from .data import DataError
        from .store import IncompleteRun

        if isinstance(e, (DataError, IncompleteRun)):
            print(f"normbench: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
