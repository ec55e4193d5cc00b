"""``normbench run``: the pipeline as one command that survives being killed.

Checks the config first (one clear message, YAML errors with file and line),
takes a lock of its own so that two runs never share a working directory (the
lock dies with its process, so a killed run leaves nothing that blocks the
next), clears Snakemake's stale locks, runs the workflow with the default
profile (``rerun-incomplete``: whatever a killed run left half-done is redone),
then builds the self-contained HTML report.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import load, reports_folder, results_folder
from .errors import ConfigError


def find_snakefile(start: Path) -> Path:
    for d in (start, *start.parents):
        if (d / "Snakefile").exists() and (d / "workflow" / "normbench").is_dir():
            return d / "Snakefile"
    raise ConfigError(f"no normbench Snakefile in {start} or above: run from a normbench checkout "
                      f"(or pass --snakefile)")


@contextlib.contextmanager
def single_run(workdir: Path):
    lock = workdir / ".snakemake" / "normbench-run.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another `normbench run` is working in {workdir}; wait for it, or stop it first") from None
        yield


def config_overrides(extra: list[str]) -> dict:
    """The ``--config KEY=VALUE ...`` (or ``-C``) entries among Snakemake's arguments, read as Snakemake reads them."""
    from snakemake.cli import parse_config

    entries, taking = [], False
    for a in extra:
        if a in ("--config", "-C"):
            taking = True
        elif a.startswith("--config="):
            entries.append(a.split("=", 1)[1])
        elif taking and not a.startswith("-"):
            entries.append(a)
        else:
            taking = False
    try:
        return parse_config(entries)
    except ValueError as e:
        raise ConfigError(f"--config {' '.join(entries)}: {e}") from None


def check_config(configfile: str | None, snake: Path, extra: list[str]) -> dict:
    """The config Snakemake will see (the file, then --config on top), checked: fail here, clearly."""
    from snakemake.utils import update_config

    from .config import read_yaml

    source = configfile or snake.parent / "config" / "config.yaml"
    overrides = config_overrides(extra)
    if not overrides:
        return load(source)
    config = read_yaml(source)
    update_config(config, overrides)
    try:
        return load(config)
    except ConfigError as e:
        raise ConfigError(f"{source} with --config {' '.join(f'{k}={v}' for k, v in overrides.items())}: {e}") from None


def gpu_slot_args(config: dict, extra: list[str], count: int | None = None) -> list[str]:
    """A local run on GPUs: GPUs × gpu_jobs slots for the training jobs (Snakemake's resource
    ``gpu_slots``), unless a profile, an executor or the user's own --resources say otherwise."""
    own = ("--profile", "--executor", "-e", "--resources", "--res")
    if any(a in own or a.startswith(tuple(o + "=" for o in own)) for a in extra) or config.get("device") == "cpu":
        return []
    from .devices import gpu_slots

    slots = gpu_slots(config, count)
    return ["--resources", f"gpu_slots={slots}"] if slots else []


def snakemake_command(snake: Path, configfile: str | None) -> list[str]:
    base = [sys.executable, "-m", "snakemake", "--snakefile", str(snake),
            "--workflow-profile", str(snake.parent / "workflow" / "profiles" / "default")]
    return base + (["--configfile", str(configfile)] if configfile else [])


def run(configfile: str | None, snakefile: str | None, extra: list[str], report: bool = True,
        html: str | None = None) -> int:
    workdir = Path.cwd()
    snake = Path(snakefile) if snakefile else find_snakefile(workdir)
    config = check_config(configfile, snake, extra)
    base = snakemake_command(snake, configfile)
    html = html or f"{reports_folder(results_folder(config))}/report.html"
    extra = list(extra) + gpu_slot_args(config, extra)  # last: --resources takes every value after it
    with single_run(workdir):
        # our lock is held, so no other run is alive here: Snakemake's locks are a killed run's
        # leftovers, removed as `snakemake --unlock` would (without a second ~10 s Snakemake start)
        shutil.rmtree(workdir / ".snakemake" / "locks", ignore_errors=True)
        if report and not {"-n", "--dry-run", "--dryrun"} & set(extra):
            base += ["--report", html, "--report-after-run"]  # built by the same Snakemake: no second start-up
        return subprocess.run(base + extra).returncode


def pipeline_fraction(cores: int = 2, extra: list[str] = ()) -> dict:
    """Run the default pipeline afresh in a scratch directory (Snakemake arguments ``extra``) and measure it."""
    from .pack import pipeline_stats

    snakefile = find_snakefile(Path.cwd())
    with tempfile.TemporaryDirectory(prefix="normbench-bench-") as tmp:
        shutil.copytree(snakefile.parent / "config", Path(tmp) / "config")
        start = time.time()
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(snakefile),
                            "--directory", tmp, "--cores", str(cores), "--quiet", *extra, "--", "all"],
                           capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"pipeline failed:\n{p.stderr[-3000:]}")
        stats = pipeline_stats(Path(tmp) / "results", wall, cores, since=start - 1, workdir=tmp)
    return stats
