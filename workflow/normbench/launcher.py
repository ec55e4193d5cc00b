"""``normbench run``: the pipeline as one command that survives being killed.

Checks the config first (one clear message, YAML errors with file and line),
takes a lock of its own so that two runs never share a working directory (the
lock dies with its process, so a killed run leaves nothing that blocks the
next), clears Snakemake's stale locks, runs the workflow with the default
profile (``rerun-incomplete``: whatever a killed run left half-done is redone),
then builds the self-contained HTML report.  While Snakemake works, the runs
finished out of the config's runs are shown (``normbench.progress``): bars in a
terminal, a plain line every ``progress_every`` seconds otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import CHECKED_ENV, digest, load, reports_folder, results_folder
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

    # Snakemake reads the Snakefile's `configfile: "config/config.yaml"` from its working directory
    workdir = Path(option_value(extra, "--directory", "-d") or ".")
    local = workdir / "config" / "config.yaml"
    source = configfile or (local if local.exists() else snake.parent / "config" / "config.yaml")
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


DRY_RUN = {"-n", "--dry-run", "--dryrun"}


def option_value(extra: list[str], *names: str) -> str | None:
    """The value of one of Snakemake's options among ``extra`` (``--opt V`` or ``--opt=V``), if given."""
    for i, a in enumerate(extra):
        for n in names:
            if a == n and i + 1 < len(extra):
                return extra[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def tracker(config: dict, extra: list[str]):
    """The progress tracker of the runs this Snakemake call works on: the config's runs (read without the
    runners' checks, which Snakemake makes), only the studies a target names if targets name studies, and
    the runs each study's adaptive stage adds once it has decided."""
    from .pipeline import Pipeline
    from .progress import Tracker
    from .runstate import plan_table, with_topups

    pipe = Pipeline.from_config(config, check_files=False, check_runs=False)
    plan = plan_table(pipe)
    named = {s for s in pipe.studies for a in extra if a.startswith(f"{pipe.results}/{s}/")}
    if named:
        plan = plan[plan.study.isin(named)]
    results = Path(option_value(extra, "--directory", "-d") or ".") / pipe.results
    return Tracker(plan, results, grow=lambda p: with_topups(results, p, pipe))


def terminal_width() -> int:
    """Columns of the terminal on stderr (0: a terminal of no size, as some wrappers' pseudo-terminals
    are, where bars would draw nothing: plain lines there)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def watched(cmd: list[str], config: dict, extra: list[str], every: float) -> int:
    """Snakemake with the runs' progress beside it.  In a terminal its lines go above the bars (read
    through a pipe); otherwise it writes as usual and a progress line joins every ``every`` seconds."""
    from .progress import Progress

    bars = sys.stdout.isatty() and sys.stderr.isatty() and terminal_width() > 0
    progress = Progress(lambda: tracker(config, extra), bars, every).start()

    def follow(p: subprocess.Popen) -> int:
        if bars:
            for line in p.stdout:
                progress.write(line)
        return p.wait()

    try:
        p = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}) if bars else subprocess.Popen(cmd))
        try:
            return follow(p)
        except KeyboardInterrupt:  # Snakemake got the Ctrl-C too: let it stop its jobs (a second one kills it)
            try:
                return follow(p)
            except KeyboardInterrupt:
                p.kill()
                raise
    finally:
        progress.stop()


def run(configfile: str | None, snakefile: str | None, extra: list[str], report: bool = True,
        html: str | None = None, progress_every: float | None = 30.0, checked: dict | None = None) -> int:
    """``progress_every`` None: no progress display.  ``checked``: the config file's content, every run
    structure of it already checked by the caller (Snakemake then skips those checks if it reads the same)."""
    workdir = Path.cwd()
    snake = Path(snakefile) if snakefile else find_snakefile(workdir)
    config = check_config(configfile, snake, extra)
    base = snakemake_command(snake, configfile)
    html = html or f"{reports_folder(results_folder(config))}/report.html"
    extra = list(extra) + gpu_slot_args(config, extra)  # last: --resources takes every value after it
    os.environ.pop(CHECKED_ENV, None)
    if checked is not None:
        os.environ[CHECKED_ENV] = digest(checked)
    with single_run(workdir):
        # our lock is held, so no other run is alive here: Snakemake's locks are a killed run's
        # leftovers, removed as `snakemake --unlock` would (without a second ~10 s Snakemake start)
        shutil.rmtree(workdir / ".snakemake" / "locks", ignore_errors=True)
        dry = bool(DRY_RUN & set(extra))
        if report and not dry:
            base += ["--report", html, "--report-after-run"]  # built by the same Snakemake: no second start-up
        if dry or progress_every is None:
            return subprocess.run(base + extra).returncode
        return watched(base + extra, config, extra, progress_every)


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
