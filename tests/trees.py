"""Small results folders trained for real (packs run in this process, no Snakemake), with the plan
the pipeline writes: whole, half-finished, or trained partly in another environment."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from normbench.pack import run_pack
from normbench.pipeline import Pipeline, aggregate_study
from normbench import config as config_file
from normbench.runstate import write_plan

ROOT = Path(__file__).resolve().parents[1]
TINY = {"device": "cpu", "threads": 1, "models": {"tiny": {"type": "vgg", "options": {"layers": [4, "M"]}}},
        "train": {"steps": 6, "eval_every": 3},
        "studies": {
            "lr_bs_sweep": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn", "none"],
                                     "batch_size": [8], "lr": [0.05, 0.5], "seed": [0, 1, 2]}},
            "gn_small_batch": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn", "gn"],
                                        "batch_size": [2, 8], "lr": [0.05], "seed": [0, 1, 2]}},
            "bn_placement": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn"],
                                      "placement": ["pre", "post"], "batch_size": [8], "lr": [0.05],
                                      "seed": [0, 1, 2]}}}}


def checked(results: Path, config: dict = TINY) -> dict:
    return config_file.load({**config, "results": str(results)})


def pipeline(results: Path, config: dict = TINY) -> Pipeline:
    return Pipeline.from_config(checked(results, config), str(results))


def train(pipe: Pipeline, study: str, packs: list[str] | None = None, env: dict | None = None) -> None:
    """Train a study's packs (all by default) here, or, given ``env``, in a child process with those
    environment variables (another environment: ATEN_CPU_CAPABILITY=default dispatches to other kernels)."""
    packs = list(pipe.packs(study)) if packs is None else packs
    if env is None:
        for p in packs:
            run_pack(pipe.pack_jobs(study, p), say=lambda m: None)
        return
    jobs = [pipe.pack_jobs(study, p) for p in packs]
    spec = Path(pipe.results).parent / f"jobs-{study}.yaml"
    spec.write_text(yaml.safe_dump(jobs))
    code = ("import sys, yaml; from normbench.pack import run_pack; "
            "[run_pack(j, say=lambda m: None) for j in yaml.safe_load(open(sys.argv[1]))]")
    p = subprocess.run([sys.executable, "-c", code, str(spec)], env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


def planned(results: Path, config: dict = TINY) -> Pipeline:
    """The pipeline with its plan written, as Snakemake's start writes it."""
    pipe = pipeline(results, config)
    write_plan(pipe, checked(results, config))
    return pipe


def finish(pipe: Pipeline, study: str) -> None:
    """Every run of the study, then its aggregated files (what the pipeline's aggregate rule writes)."""
    train(pipe, study)
    aggregate_study(pipe, study)
