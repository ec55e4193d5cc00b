"""Which device a job trains on.

Snakemake's resources only limit how many GPU jobs run at once; they do not say
which GPU a job should use (snakemake#281).  Small jobs share a GPU: with G
visible GPUs and ``gpu_jobs`` jobs per GPU there are G × gpu_jobs slots, and a
job claims the first free one itself, holding an exclusive lock on
``$TMPDIR/normbench-gpu-slot-<k>.lock`` for its lifetime; slot k trains on GPU
k mod G, so the jobs spread evenly.  Under SLURM (or any scheduler that sets
CUDA_VISIBLE_DEVICES to one device) there is a single visible GPU and nothing
to choose.
"""

from __future__ import annotations

import fcntl
import os
import tempfile

import torch

_HELD: list = []  # open lock files: released when the process exits


def slot_lock(k: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"normbench-gpu-slot-{k}.lock")


def claim_gpu(count: int | None = None, gpu_jobs: int = 1) -> int:
    """The GPU of the first free slot of ``count × gpu_jobs``."""
    count = torch.cuda.device_count() if count is None else count
    if count <= 1 or _HELD:
        return 0 if not _HELD else _HELD[0][1]
    for k in range(count * gpu_jobs):
        f = open(slot_lock(k), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _HELD.append((f, k % count))
        return k % count
    return os.getpid() % count  # more jobs than slots (resources not set): spread them


def resolve_device(spec: str, gpu_jobs: int = 1) -> torch.device:
    """The job's device; a GPU is made the process's current device, so that what PyTorch creates on
    "the current device" (streams, a CUDA graph's capture stream, the context itself) is on it, not on GPU 0."""
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    device = torch.device(f"cuda:{claim_gpu(gpu_jobs=gpu_jobs)}" if spec in ("auto", "cuda") else spec)
    torch.cuda.set_device(device)
    return device


def gpu_slots(config: dict, count: int | None = None) -> int:
    """Snakemake's ``gpu_slots`` resource for a local run of ``config``: GPUs × gpu_jobs (0: no GPU run)."""
    device = config.get("device", "auto")
    if device == "cpu":
        return 0
    count = torch.cuda.device_count() if count is None else count
    if device.startswith("cuda:"):
        count = min(count, 1)
    return count * int(config.get("gpu_jobs", 1))
