"""Results as users read them: pandas, pyarrow datasets (hive on), DuckDB and polars type every
column the same way, on the aggregates and on the per-run files; files get the permissions the
user's umask gives, so colleagues on a shared cluster can read them."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"device": "cpu", "threads": 1, "models": {"tiny": {"type": "vgg", "options": {"layers": [4, "M"]}}},
          "train": {"steps": 6, "eval_every": 3},
          "studies": {"lr_bs_sweep": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn"],
                                               "batch_size": [8, 16], "lr": [1e-7, 0.003, 0.1], "seed": [0, 1]}}}}


def pipeline_under_umask(workdir: Path, umask: int, config: dict = CONFIG) -> Path:
    (workdir / "config").mkdir(parents=True)
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    code = (f"import os, sys; os.umask({umask}); from normbench.cli import main; "
            f"sys.exit(main(['run', '--snakefile', {str(ROOT / 'Snakefile')!r}, '--cores', '2']))")
    p = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return workdir


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return pipeline_under_umask(tmp_path_factory.mktemp("readers"), 0o022) / "results"


def test_every_reader_types_and_values_alike(results):
    study = results / "lr_bs_sweep"
    for kind in ("summary", "metrics"):
        tree, agg = study / "runs" / kind, study / f"{kind}.parquet"
        glob = str(tree / "**" / "*.parquet")
        frames = {
            "pandas (folder)": pd.read_parquet(tree),
            "pandas (aggregate)": pd.read_parquet(agg),
            "pyarrow dataset, hive": ds.dataset(tree, format="parquet", partitioning="hive").to_table().to_pandas(),
            "pyarrow dataset, aggregate": ds.dataset(agg, format="parquet", partitioning="hive").to_table().to_pandas(),
            "duckdb (glob)": duckdb.sql(f"select * from read_parquet('{glob}')").df(),
            "duckdb (aggregate)": duckdb.sql(f"select * from '{agg}'").df(),
            "polars (glob)": pl.read_parquet(glob).to_pandas(),
            "polars (aggregate)": pl.read_parquet(agg).to_pandas(),
        }
        for name, df in frames.items():
            assert str(df.lr.dtype) == "float64", (kind, name, df.lr.dtype)
            assert str(df.batch_size.dtype) == "int64", (kind, name, df.batch_size.dtype)
            assert sorted(df.lr.unique()) == [1e-07, 0.003, 0.1], (kind, name)
            assert sorted(df.batch_size.unique()) == [8, 16], (kind, name)
            assert len(df.columns) == len(frames["pandas (aggregate)"].columns), (kind, name)
        key = ["norm", "batch_size", "lr", "seed"] + (["step", "split", "metric"] if kind == "metrics" else [])
        ref = frames["pandas (aggregate)"].sort_values(key).reset_index(drop=True)
        for name, df in frames.items():
            got = df.sort_values(key).reset_index(drop=True)[ref.columns]
            for col in ("value", "final_test_acc", "lr"):
                if col in ref:
                    np.testing.assert_array_equal(got[col].to_numpy(float), ref[col].to_numpy(float), err_msg=name)


def test_every_reader_types_where_each_run_ran_alike(results):
    """The environment columns (normbench.provenance), from the aggregate and the run files; and the
    folder's plan."""
    from normbench.store import ENVIRONMENT_FIELDS

    import torch

    agg, glob = results / "lr_bs_sweep/summary.parquet", str(results / "lr_bs_sweep/runs/summary/**/*.parquet")
    frames = {"pandas": pd.read_parquet(agg), "pandas (folder)": pd.read_parquet(results / "lr_bs_sweep/runs/summary"),
              "pyarrow": ds.dataset(agg, format="parquet", partitioning="hive").to_table().to_pandas(),
              "duckdb": duckdb.sql(f"select * from read_parquet('{glob}')").df(),
              "polars": pl.read_parquet(glob).to_pandas()}
    cols = [n for n, _ in ENVIRONMENT_FIELDS]
    ref = frames["pandas"].sort_values(["batch_size", "lr", "seed"]).reset_index(drop=True)
    assert str(ref.torch_threads.dtype) == "int64" and str(ref.git_dirty.dtype) == "bool"
    assert set(ref.cpu_capability) == {torch.backends.cpu.get_cpu_capability()} and set(ref.torch_threads) == {1}
    assert set(ref.device_type) == {"cpu"} and ref.gpu_name.isna().all() and ref.data_hash.nunique() == 1
    for name, df in frames.items():
        df = df.sort_values(["batch_size", "lr", "seed"]).reset_index(drop=True)
        assert str(df.torch_threads.dtype) == "int64", name
        assert str(df.git_dirty.dtype) == "bool" and df.git_dirty.tolist() == ref.git_dirty.tolist(), name
        for c in cols:
            if c not in ("torch_threads", "git_dirty"):
                assert df[c].dtype == object or str(df[c].dtype).startswith("str"), (name, c, df[c].dtype)
                assert df[c].fillna("").tolist() == ref[c].fillna("").tolist(), (name, c)
    plan = results / "plan.parquet"
    sizes = {len(pd.read_parquet(plan)), len(duckdb.sql(f"from '{plan}'").df()), len(pl.read_parquet(plan)),
             ds.dataset(plan, format="parquet").count_rows()}
    assert sizes == {12}


def test_no_key_value_folders_for_readers_to_guess_types_from(results):
    assert not [p for p in results.rglob("*") if "=" in p.name]


def modes(root: Path):
    for p in root.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            yield p, stat.S_IMODE(p.stat().st_mode)


def test_files_are_readable_by_colleagues_under_umask_022(results):
    for folder in (results, results.parent / "reports"):
        bad = [(str(p), oct(m)) for p, m in modes(folder) if m != 0o644]
        assert not bad, bad[:5]


@pytest.mark.slow
def test_files_follow_a_private_umask_too(tmp_path):
    small = {**CONFIG, "studies": {"lr_bs_sweep": {"grid": {**CONFIG["studies"]["lr_bs_sweep"]["grid"],
                                                            "batch_size": [8], "lr": [0.1]}}}}
    wd = pipeline_under_umask(tmp_path, 0o077, small)
    for folder in (wd / "results", wd / "reports"):
        bad = [(str(p), oct(m)) for p, m in modes(folder) if m != 0o600]
        assert not bad, bad[:5]
