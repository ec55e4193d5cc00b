# Config -> validated pipeline (names, combinations, files) -> targets.
# Every check runs here, before any job starts; messages name the config key.
import os
import sys

# The package lives beside the rules; jobs (local, conda, SLURM) find it through PYTHONPATH.
PACKAGE_DIR = os.path.join(workflow.basedir, "workflow")
sys.path.insert(0, PACKAGE_DIR)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_DIR, os.environ.get("PYTHONPATH")])))

import normbench.pipeline as nbp
from normbench.reports import ARTIFACTS
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


def report_targets():
    return [f"reports/{s}/README.md" for s in PIPE.studies] + ["reports/index.md"]


def report_outputs(study):
    """A study's report files (normbench.reports.ARTIFACTS), figures and tables
    marked for the HTML report with the caption the job writes from the data."""
    title = STUDIES[study].title
    # written by the report job itself, in the working directory (not beside the rules)
    caption = lambda name: os.path.abspath(f"reports/{study}/captions/{name}.rst")
    out = {"md": f"reports/{study}/README.md", "finding": f"reports/{study}/finding.json"}
    for kind, ext in (("figures", "png"), ("tables", "html")):
        for name, compares in ARTIFACTS[study][kind].items():
            out[f"{kind}_{name}"] = report(
                f"reports/{study}/{name}.{ext}",
                caption=caption(name),
                category=title,
                labels={"study": study, kind[:-1]: name, "compares": compares},
            )
    for name in ARTIFACTS[study]["tables"]:
        out[f"csv_{name}"] = f"reports/{study}/{name}.csv"
    return out
