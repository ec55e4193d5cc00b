"""Helpers for tests that drive `make run` or Snakemake as a child process."""

import subprocess


def finished(p: subprocess.Popen, timeout: float) -> str:
    """Wait for ``p`` to end, assert it succeeded (showing the tail of its output if not),
    and return its output."""
    out = p.communicate(timeout=timeout)[0]
    assert p.returncode == 0, out[-3000:]
    return out
