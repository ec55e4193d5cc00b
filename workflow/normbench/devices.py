"""Which device a job trains on.

Snakemake's ``gpu`` resource only limits how many GPU jobs run at once; it does
not say which GPU a job should use (snakemake#281).  On a machine with several
visible GPUs a job therefore claims one itself: it holds an exclusive lock on
``$TMPDIR/normbench-gpu-<i>.lock`` for its lifetime, taking the first free one.
Under SLURM (or any scheduler that sets CUDA_VISIBLE_DEVICES to one device)
there is a single visible GPU and nothing to choose.
"""

from __future__ import annotations

import fcntl
import os
import tempfile

import torch

_HELD: list = []  # open lock files: released when the process exits


def claim_gpu(count: int | None = None) -> int:
    count = torch.cuda.device_count() if count is None else count
    if count <= 1 or _HELD:
        return 0 if not _HELD else _HELD[0][1]
    for i in range(count):
        f = open(os.path.join(tempfile.gettempdir(), f"normbench-gpu-{i}.lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _HELD.append((f, i))
        return i
    return os.getpid() % count  # more jobs than GPUs (resources not set): spread them


def resolve_device(spec: str) -> torch.device:
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec in ("auto", "cuda"):
        return torch.device(f"cuda:{claim_gpu()}")
    return torch.device(spec)
