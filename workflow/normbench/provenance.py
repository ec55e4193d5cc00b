"""Where a run ran: the machine, the libraries and the code, recorded in its summary.

The same seeds on two machines of the same kind can give different runs (the
instruction set torch dispatches to, the thread count, the GPU and its
libraries all change the rounding), so every run records its environment, and
a study whose runs come from more than one (instruction set, device type, torch
version) says so in its report.  None of this enters the settings fingerprint
(``RunConfig.fingerprint``): a finished run is the same run on another machine.

Everything here is read once per process (``lru_cache``): a pack's runs share it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import re
import subprocess
from pathlib import Path

import pandas as pd

from .store import ENVIRONMENT_FIELDS

ENVIRONMENT_COLUMNS = [n for n, _ in ENVIRONMENT_FIELDS]  # the summary columns environment() fills
# runs that differ in one of these may round differently: a study mixing them is flagged
MIXED_KEY = ["cpu_capability", "device_type", "torch_version"]
# what tells two environments apart in a report (with the run count of each)
SHOWN = ["cpu_model", "cpu_capability", "torch_threads", "device_type", "gpu_name", "gpu_driver", "torch_version",
         "cuda_version", "cudnn_version", "python_version", "os", "git_rev", "git_dirty"]
_HERE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=_HERE, capture_output=True, text=True, timeout=10)
    except Exception:  # no git, a hung file system
        return None
    return p.stdout if p.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    rev = (_git("rev-parse", "--short", "HEAD") or "").strip()
    return rev or "unknown"


@functools.lru_cache(maxsize=1)
def git_dirty() -> bool | None:
    """Whether the checkout that holds this package differs from its commit (tracked files; an untracked
    scratch file changes no result).  None: not a git checkout (an installed wheel)."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


def cpu_name(cpuinfo: str, machine: str) -> str | None:
    """The CPU's name in a /proc/cpuinfo text: its marketing name (x86 ``model name``; some ARM boards'
    ``Hardware``), else the ARM part number; None if it names none."""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.M)
        if m and m.group(1).strip():
            return m.group(1).strip()
    m = re.search(r"^CPU part\s*:\s*(\S+)", cpuinfo, re.M)
    return f"{machine} (CPU part {m.group(1)})" if m else None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's name where the OS says it (Linux /proc/cpuinfo, macOS sysctl), else its architecture."""
    try:
        name = cpu_name(Path("/proc/cpuinfo").read_text(), platform.machine())
    except OSError:
        name = None
    if name is None and platform.system() == "Darwin":
        try:
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or None
        except Exception:
            pass
    return name or platform.processor() or platform.machine()


def driver_version(text: str) -> str | None:
    """The driver version in /proc/driver/nvidia/version (proprietary or open kernel module)."""
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return m.group(1) if m else None


@functools.lru_cache(maxsize=1)
def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version (Linux: /proc/driver/nvidia/version; else nvidia-smi)."""
    try:
        found = driver_version(Path("/proc/driver/nvidia/version").read_text())
        if found:
            return found
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        return out[0] if out else None
    except Exception:
        return None


def settings_hash(settings: dict) -> str:
    """Every setting of the run (execution ones too: device, threads), hashed; the settings fingerprint in
    the summary's footer leaves out those that do not change what a run computes."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def data_hash(dataset: str, data_dir: str) -> str:
    """The run's data as loaded -- training and test inputs and targets, on the CPU -- hashed: the files'
    content after decoding, or what a generator produced on this machine.  Loaded once per process."""
    from .data import DATASETS

    d = DATASETS.get(dataset).load(data_dir)
    h = hashlib.sha256()
    for t in (d.x_train, d.y_train, d.x_test, d.y_test):
        t = t.detach().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def environment(settings: dict, device) -> dict:
    """The environment columns of one run's summary (``settings``: its RunConfig as a dict; ``device``
    the torch device it trained on)."""
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # follows ATEN_CPU_CAPABILITY
        "torch_threads": torch.get_num_threads(),
        "device_type": device.type,
        "cuda_version": torch.version.cuda,  # the build's (None: a CPU-only build)
        "cudnn_version": str(torch.backends.cudnn.version()) if cuda and torch.backends.cudnn.is_available() else None,
        "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_driver": nvidia_driver() if cuda else None,
        "python_version": platform.python_version(),
        "os": platform.platform(),
        "git_dirty": git_dirty(),
        "config_hash": settings_hash(settings),
        "data_hash": data_hash(settings["dataset"], str(settings["data_dir"])),
    }


# -- reading it back ---------------------------------------------------------------------------------


def _fill(summary: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """The columns, with "unknown" for files written before they were recorded (null)."""
    out = pd.DataFrame(index=summary.index)
    for c in cols:
        v = summary[c] if c in summary else pd.Series(None, index=summary.index, dtype=object)
        out[c] = v.astype(object).where(v.notna(), None)
    return out


def environments(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct environment among a study's runs (``SHOWN`` columns) with its run count,
    the most runs first."""
    if summary.empty:
        return pd.DataFrame(columns=SHOWN + ["runs"])
    env = _fill(summary, SHOWN).fillna("unknown").astype(str)
    return (env.groupby(SHOWN, sort=False).size().rename("runs").reset_index()
            .sort_values("runs", ascending=False, kind="stable").reset_index(drop=True))


def mixed(summary: pd.DataFrame) -> list[str]:
    """The (instruction set, device type, torch version) combinations among the runs, as text, when
    there is more than one (a study whose claims may differ from a single machine's); [] otherwise."""
    if summary.empty:
        return []
    keys = _fill(summary, MIXED_KEY).fillna("unknown").astype(str).drop_duplicates()
    return [" / ".join(r) for r in keys.itertuples(index=False)] if len(keys) > 1 else []


def describe(env: pd.Series) -> str:
    """One environment in a line: CPU (instruction set, threads), device, libraries, code."""
    gpu = (f", {env.gpu_name} (driver {env.gpu_driver}, CUDA {env.cuda_version}, cuDNN {env.cudnn_version})"
           if env.device_type == "cuda" else "")
    dirty = {"True": " (uncommitted changes)", "False": ""}.get(str(env.git_dirty), " (commit state unknown)")
    threads = f"{env.torch_threads} thread" + ("" if str(env.torch_threads) == "1" else "s")
    return (f"{env.cpu_model} ({env.cpu_capability}, {threads}), {env.device_type}{gpu}; "
            f"torch {env.torch_version}, Python {env.python_version}, {env.os}; git {env.git_rev}{dirty}")


def summarize(summary: pd.DataFrame) -> dict:
    """What a report says about where a study's runs ran: each environment with its run count, and the
    mixed (instruction set, device, torch) combinations if any."""
    return {"environments": [{"runs": int(r.runs), "text": describe(r)} for _, r in environments(summary).iterrows()],
            "mixed": mixed(summary)}
