"""Parquet schemas, atomic writes, and reading runs back without hive inference.

Every file appears under its final name complete or not at all: we write a
temporary sibling and ``os.replace`` it (atomic on POSIX within one directory).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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
        ("final_test_acc", pa.float64()),
        ("final_test_loss", pa.float64()),
        ("best_test_acc", pa.float64()),
        ("final_train_loss", pa.float64()),
        ("diverged", pa.bool_()),
        ("diverged_step", pa.int64()),  # null unless diverged
        ("steps", pa.int64()),
        ("examples", pa.int64()),
        ("target_acc", pa.float64()),
        ("steps_to_target", pa.int64()),  # null: target never reached
        ("examples_to_target", pa.int64()),
        ("wall_time_s", pa.float64()),
        ("train_time_s", pa.float64()),
        ("probe_time_s", pa.float64()),
        ("num_params", pa.int64()),
        ("device", pa.string()),
        ("torch_version", pa.string()),
        ("normbench_version", pa.string()),
        ("git_rev", pa.string()),
    ]
)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
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


def write_parquet(df: pd.DataFrame | pa.Table, path: str | Path, schema: pa.Schema | None = None) -> None:
    table = df if isinstance(df, pa.Table) else (to_table(df, schema) if schema else pa.Table.from_pandas(df, preserve_index=False))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def read_parquet(path: str | Path, schema: pa.Schema | None = None) -> pd.DataFrame:
    """One file, typed; partitioning=None so hive-style folders are never parsed."""
    table = pq.read_table(path, schema=schema, partitioning=None)
    return table.to_pandas()


class IncompleteRun(RuntimeError):
    """A run folder that should hold results but does not (message names the path)."""


def read_runs(run_dirs: Iterable[str | Path], name: str, schema: pa.Schema) -> pa.Table:
    """Concatenate ``<run>/<name>`` over the runs; a missing or unreadable file is an error."""
    tables = []
    for d in run_dirs:
        f = Path(d) / name
        if not f.exists():
            raise IncompleteRun(f"run {d} has no {name}: it did not finish; re-run the pipeline to complete it")
        try:
            tables.append(pq.read_table(f, schema=schema, partitioning=None))
        except Exception as e:
            raise IncompleteRun(f"run {d}: {f} is unreadable ({e}); delete the run folder and re-run") from e
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def aggregate_runs(run_dirs: Iterable[str | Path], summary_path: str | Path, metrics_path: str | Path) -> tuple[int, int]:
    """One study's runs -> its summary.parquet and metrics.parquet (typed, atomic)."""
    run_dirs = list(run_dirs)
    summary = read_runs(run_dirs, "summary.parquet", SUMMARY_SCHEMA)
    metrics = read_runs(run_dirs, "metrics.parquet", METRICS_SCHEMA)
    write_parquet(metrics, metrics_path)
    write_parquet(summary, summary_path)
    return summary.num_rows, metrics.num_rows
