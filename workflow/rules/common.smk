# Config -> validated pipeline (names, combinations, files) -> targets.
# Every check runs here, before any job starts; messages name the config key.
import os
import sys

# The package lives beside the rules; jobs (local, conda, SLURM) find it through PYTHONPATH.
PACKAGE_DIR = os.path.join(workflow.basedir, "workflow")
sys.path.insert(0, PACKAGE_DIR)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_DIR, os.environ.get("PYTHONPATH")]))

import normbench.pipeline as nbp
from normbench.studies import STUDIES

ENV = "../../envs/environment.yaml"

nbp.coerce_numbers(config)  # YAML reads 1e-3 (no dot) as a string
nbp.validate_schema(config)  # snakemake.utils.validate + the failing key in the message
PIPE = nbp.Pipeline.from_config(config)
RESULTS = PIPE.results


wildcard_constraints:
    study="|".join(STUDIES),
    dataset="[a-z0-9_]+",


def all_targets():
    return [f"{RESULTS}/{s}/summary.parquet" for s in PIPE.studies] + report_targets()


def dataset_markers(wildcards):
    from normbench.data import TORCHVISION

    datasets = {job["config"]["dataset"] for job in PIPE.pack_jobs(wildcards.study, wildcards.pack)}
    return [f"{PIPE.data_dir}/{d}/verified.json" for d in sorted(datasets) if d in TORCHVISION]
