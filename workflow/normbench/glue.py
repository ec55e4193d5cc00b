"""What every Snakemake script needs: its log file as stdout/stderr."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def logged(log_path: str):
    """Send stdout and stderr (progress, warnings, tracebacks) to the rule's log."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            yield
        except BaseException:
            import traceback

            traceback.print_exc(file=f)
            raise
