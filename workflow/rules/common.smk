# Config -> checked pipeline (names, combinations, files) -> targets.
# Every check runs here, before any job starts; a mistake is one message naming
# the file, the key, the value and the allowed values -- no traceback.
import os
import re
import sys
import time

# The package lives beside these rules (also when this workflow is used as a module
# of another one); jobs (local, conda, SLURM) find it through PYTHONPATH.
PACKAGE_DIR = os.path.normpath(os.path.join(workflow.current_basedir, ".."))
sys.path.insert(0, PACKAGE_DIR)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_DIR, os.environ.get("PYTHONPATH")])))

from normbench import config as nb_config
from normbench.errors import ConfigError
from normbench.pack import pipeline_stats
from normbench.pipeline import Pipeline
from normbench.report import artifacts
from normbench.runstate import write_plan
from normbench.studies import STUDIES

ENV = "../../envs/environment.yaml"
CONFIG_SOURCE = ", ".join(map(str, workflow.configfiles)) or "the config"

try:
    CONFIG = nb_config.load(config)
    PIPE = Pipeline.from_config(CONFIG, check_runs=not nb_config.checked_here(config, os.environ))
except ConfigError as e:
    sys.exit(f"normbench: config error in {CONFIG_SOURCE}: {e}")
RESULTS = PIPE.results
EVALUATE = CONFIG.get("evaluate")  # `normbench evaluate`: the targets are its report card
# reports, logs and benchmarks of a run with its own results folder (a smoke check, evaluate) stay inside it
REPORTS = PIPE.reports
LOGS, BENCHMARKS = nb_config.beside(RESULTS, "logs"), nb_config.beside(RESULTS, "benchmarks")
_STARTED = []


wildcard_constraints:
    study="|".join(PIPE.studies),
    dataset="[a-z0-9_]+",


def all_targets():
    if EVALUATE:  # the card or the leaderboard, read from the arms' runs (shared by every card of the tier)
        return [f"{EVALUATE['reports']}/{f}" for f in evaluate_files()]
    return [f"{RESULTS}/{s}/summary.parquet" for s in PIPE.studies] + report_targets()


def evaluate_norms():
    """The normalizers on `normbench evaluate`'s page: those graded, then the baselines."""
    return [*EVALUATE["norms"], *EVALUATE["baselines"]]


def evaluate_entry(norm):
    """A norm's registry type and options, as the config names it."""
    entry = PIPE.norms.get(norm)
    return {"type": entry.type if entry else norm, "options": entry.options if entry else {}}


def topup_markers(study):
    """The packs of the runs the adaptive stage added to a study (known once its checkpoint ran)."""
    checkpoints.topup.get(study=study)
    return PIPE.load_topup(study)


def evaluate_runs(wildcards=None):
    """Each arm's runs, the seeds added to undecided verdicts included, aggregated per study: the page
    (and the timing) come after all training.  Through a rule per study, not one function over every
    study's checkpoint: that stops at the first undecided study, and Snakemake would see the next
    study's runs only after it -- the arms trained one after another, a core idle at each checkpoint."""
    return [f"{RESULTS}/{s}/{kind}.parquet" for s in PIPE.studies for kind in ("summary", "metrics")]


def evaluate_files():
    """The files of `normbench evaluate`'s page (the HTML one last: the Snakemake report shows it)."""
    if EVALUATE["page"] == "leaderboard":
        return ["README.md", "leaderboard.csv", "leaderboard.png", "leaderboard.svg", "leaderboard.html"]
    return ["README.md", "card.csv", "card.html"]


def dataset_markers(wildcards):
    datasets = {job["config"]["dataset"] for job in PIPE.pack_jobs(wildcards.study, wildcards.pack)}
    return [f"{PIPE.data_dir}/{d}/verified.json" for d in sorted(datasets & PIPE.downloads())]


def report_targets():
    """Every file of every report (captions too: a deleted one is rebuilt, not a broken --report)."""
    files = [str(f) for s in PIPE.studies for f in report_outputs(s).values()]
    return files + [f"{REPORTS}/index.md"]


def report_outputs(study):
    """A study's report files (normbench.report.artifacts); figures and tables marked for the
    HTML report with the caption the job writes from the data (captions are outputs too)."""
    st = STUDIES.get(study)
    files = artifacts(st)
    base = f"{REPORTS}/{study}"
    caption = lambda name: os.path.abspath(f"{base}/captions/{name}.rst")
    out = {"md": f"{base}/README.md", "finding": f"{base}/finding.json"}
    for kind, ext in (("figures", "png"), ("tables", "html")):
        names = list(getattr(st, kind)) + (["claims"] if kind == "tables" else [])
        for name in names:
            compares = getattr(st, kind).get(name, "claim")
            out[f"{kind}_{name}"] = report(
                f"{base}/{name}.{ext}",
                caption=caption(name),
                category=st.title,
                labels={"study": study, kind[:-1]: name, "compares": compares},
            )
    taken = set(out.values())
    for f in files["tables"] + files["figures"] + files["captions"]:
        path = f"{base}/{f}"
        if path not in taken:
            out[re.sub(r"\W", "_", f)] = path
    return out


def pipeline_started():
    """The folder's plan first (every run of the config): `normbench status` and partial reports read it."""
    _STARTED.append(time.time())
    write_plan(PIPE, CONFIG)


def pipeline_finished(wf):
    """After a local run that trained something: how much of the machine went into training
    (the runs' CPU time, so waiting never counts as work)."""
    if not (wf.local_exec and not wf.dryrun and _STARTED):  # on a cluster "cores" means nothing here
        return
    stats = pipeline_stats(RESULTS, time.time() - _STARTED[0], wf.cores, since=_STARTED[0])
    if stats:
        print(
            f"normbench: {stats['runs']} runs trained, {stats['useful_s']:.0f} CPU-seconds of training in "
            f"{stats['wall_s']:.0f} s on {stats['cores']} cores: useful-compute fraction {stats['fraction']:.2f}"
        )
