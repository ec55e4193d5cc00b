"""Parquet schemas, atomic writes, and reading runs back.

Every file appears under its final name complete or not at all: we write a
temporary sibling and ``os.replace`` it (atomic on POSIX within one directory),
with the permissions the user's umask gives a new file (colleagues on a shared
cluster read results too), not the 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import IncompleteRun

# A run's identity: typed columns carried by every row, so nothing parses a path.
PARAM_FIELDS = [
    ("study", pa.string()),
    ("model", pa.string()),
    ("dataset", pa.string()),
    ("norm", pa.string()),
    ("placement", pa.string()),
    ("activation", pa.string()),
    ("batch_size", pa.int64()),
    ("lr", pa.float64()),
    ("seed", pa.int64()),
]
PARAM_COLUMNS = [n for n, _ in PARAM_FIELDS]

METRICS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("examples", pa.int64()),
        ("split", pa.string()),  # train | test | probe
        ("metric", pa.string()),
        ("layer", pa.string()),  # nullable: per-layer probes only
        ("step_size", pa.float64()),  # nullable: rel_loss's α
        ("value", pa.float64()),
        ("wall_time_s", pa.float64()),
    ]
    + PARAM_FIELDS
)

# Where the run ran (normbench.provenance; null in files written before they were recorded).  Not part
# of the settings fingerprint: a finished run is the same run on another machine.
ENVIRONMENT_FIELDS = [
    ("cpu_model", pa.string()),
    ("cpu_capability", pa.string()),  # torch.backends.cpu.get_cpu_capability(): the kernels torch dispatched to
    ("torch_threads", pa.int64()),
    ("device_type", pa.string()),  # cpu | cuda | mps
    ("cuda_version", pa.string()),  # torch's build (null: a CPU-only build)
    ("cudnn_version", pa.string()),  # CUDA runs only
    ("gpu_name", pa.string()),  # CUDA runs only
    ("gpu_driver", pa.string()),  # CUDA runs only
    ("python_version", pa.string()),
    ("os", pa.string()),
    ("git_dirty", pa.bool_()),  # uncommitted changes to tracked files (null: not a git checkout)
    ("config_hash", pa.string()),  # every setting of the run, execution ones too
    ("data_hash", pa.string()),  # the training and test tensors as loaded
]

SUMMARY_SCHEMA = pa.schema(
    PARAM_FIELDS
    + [
        # what the ids meant (reports read these, never the config)
        ("norm_type", pa.string()),
        ("norm_options", pa.string()),  # JSON
        ("model_type", pa.string()),
        ("model_options", pa.string()),  # JSON
        ("init", pa.string()),
        ("optimizer", pa.string()),
        ("warmup_steps", pa.int64()),  # linear lr warm-up (null in files written before it existed)
        ("final_test_acc", pa.float64()),
        ("final_test_loss", pa.float64()),
        ("best_test_acc", pa.float64()),
        ("final_train_loss", pa.float64()),
        ("final_train_acc", pa.float64()),
        ("diverged", pa.bool_()),  # a non-finite loss or one above the bound
        ("diverged_step", pa.int64()),  # null unless diverged
        ("collapsed", pa.bool_()),  # finite, but ends at chance accuracy
        ("chance_acc", pa.float64()),
        ("steps", pa.int64()),
        ("examples", pa.int64()),
        ("workers", pa.int64()),  # data-parallel replicas (norm statistics per replica)
        ("target_acc", pa.float64()),
        ("steps_to_target", pa.int64()),  # null: target never reached
        ("examples_to_target", pa.int64()),
        ("wall_time_s", pa.float64()),
        ("train_time_s", pa.float64()),
        ("probe_time_s", pa.float64()),
        ("probe_every", pa.int64()),  # the regular probe interval (0: none); extra probes (probe_at) lie off it
        ("compute_time_s", pa.float64()),  # CPU seconds of the run's process while it trained (a pack's shared)
        ("num_params", pa.int64()),
        ("device", pa.string()),
        ("torch_version", pa.string()),
        ("normbench_version", pa.string()),
        ("git_rev", pa.string()),
    ]
    + ENVIRONMENT_FIELDS
)


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """What ``open()`` would give a new file under this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())  # mkstemp's 0600 would hide results from colleagues
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def to_table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    missing = [n for n in schema.names if n not in df.columns]
    if missing:
        raise ValueError(f"missing columns for the Parquet schema: {missing}")
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def write_parquet(df: pd.DataFrame | pa.Table, path: str | Path, schema: pa.Schema | None = None,
                  metadata: dict[str, str] | None = None) -> None:
    """``metadata``: more key-value pairs in the file's footer (readers that do not ask never see them)."""
    if isinstance(df, pa.Table):
        table = df
    else:
        table = to_table(df, schema) if schema else pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_metadata(path: str | Path, key: str) -> str | None:
    """One key of a Parquet file's footer metadata (None: absent, or the file is unreadable)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    value = meta.get(key.encode())
    return value.decode() if value is not None else None


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def read_parquet(path: str | Path, schema: pa.Schema | None = None) -> pd.DataFrame:
    """One file, typed; partitioning=None so folder names are never parsed."""
    return pq.read_table(path, schema=schema, partitioning=None).to_pandas()


def read_runs(files: Iterable[str | Path], schema: pa.Schema) -> pa.Table:
    """Concatenate the runs' files; a missing or unreadable file is an error naming it."""
    tables = []
    for f in map(Path, files):
        if not f.exists():
            raise IncompleteRun(f"{f} is missing: that run did not finish; re-run the pipeline to complete it")
        try:
            tables.append(pq.read_table(f, schema=schema, partitioning=None))
        except Exception as e:
            raise IncompleteRun(f"{f} is unreadable ({e}); delete it and re-run the pipeline") from e
    return pa.concat_tables(tables) if tables else schema.empty_table()


def run_files(results: str | Path, study: str, run_path: str) -> dict[str, Path]:
    """Where one run's two files live: ``<results>/<study>/runs/{summary,metrics}/<run path>.parquet``.
    One tree per kind, so a folder holds files of one schema and any reader can take it whole;
    no ``key=value`` folder names, so no reader infers (mis-typed) columns from the path."""
    base = Path(results) / study / "runs"
    return {kind: base / kind / f"{run_path}.parquet" for kind in ("summary", "metrics")}


def checkpoint_dir(results: str | Path, study: str, pack: str) -> Path:
    """Where a pack's resumable checkpoints live until its runs finish (outside Snakemake's outputs, so a
    failed job's retry resumes)."""
    return Path(results) / study / "checkpoints" / pack


def aggregate_runs(summaries: list, metrics: list, summary_path, metrics_path) -> tuple[int, int]:
    """One study's run files -> its summary.parquet and metrics.parquet (typed, atomic)."""
    summary = read_runs(summaries, SUMMARY_SCHEMA)
    rows = read_runs(metrics, METRICS_SCHEMA)
    write_parquet(rows, metrics_path)
    write_parquet(summary, summary_path)
    return summary.num_rows, rows.num_rows
