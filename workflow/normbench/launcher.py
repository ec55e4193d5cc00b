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
import subprocess
import sys
from pathlib import Path

from .config import load
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


def run(configfile: str | None, snakefile: str | None, extra: list[str], report: bool = True) -> int:
    workdir = Path.cwd()
    snake = Path(snakefile) if snakefile else find_snakefile(workdir)
    load(configfile or snake.parent / "config" / "config.yaml")  # fail here, clearly, not inside Snakemake
    base = [sys.executable, "-m", "snakemake", "--snakefile", str(snake),
            "--workflow-profile", str(snake.parent / "workflow" / "profiles" / "default")]
    base += ["--configfile", str(configfile)] if configfile else []
    with single_run(workdir):
        # our lock is held, so no other run is alive here: Snakemake's locks are stale leftovers
        subprocess.run(base + ["--unlock"], capture_output=True)
        rc = subprocess.run(base + list(extra)).returncode
        if rc == 0 and report and not {"-n", "--dry-run", "--dryrun"} & set(extra):
            rc = subprocess.run(base + ["--report", "reports/report.html"]).returncode
    return rc
