"""The Snakemake pipeline: dry-runs of every shipped config, lint and format, a tiny real run,
a normalizer and a study from outside the package, the workflow as a module of another."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from normbench.store import METRICS_SCHEMA, SUMMARY_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
CONFIGS = [ROOT / "config/config.yaml"] + sorted((ROOT / "config/experiments").glob("*.yaml"))

TINY = {
    "device": "cpu", "threads": 1, "max_seeds": 0,  # the adaptive stage has its own tests (test_topup)
    "norms": {"gn": {"type": "gn", "options": {"groups": 4}}},
    "models": {"tiny": {"type": "vgg", "options": {"layers": [8, "M"]}}},
    "train": {"steps": 20, "eval_every": 10},
    "studies": {
        "lr_bs_sweep": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn", "gn"],
                                 "batch_size": [16], "lr": ["1e-2", 0.1], "seed": [0, 1]}},
    },
}


def run_snakemake(workdir: Path, *args, timeout=600, snakefile=ROOT / "Snakefile", env=None):
    return subprocess.run(SNAKEMAKE + ["--snakefile", str(snakefile), "--directory", str(workdir), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def workdir_with(tmp_path: Path, config: dict) -> Path:
    """A working directory holding config/config.yaml, as a user's checkout would."""
    (tmp_path / "config").mkdir(parents=True, exist_ok=True)
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(config):
    from normbench.pipeline import load_pipeline

    pipe = load_pipeline(config, check_files=False)  # every run checked by its runner (meta-device forward)
    assert pipe.studies and all(pipe.packs(s) for s in pipe.studies)


def test_dry_run_of_the_default_and_an_experiment(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    for extra in ([], ["--configfile", str(ROOT / "config/experiments/gn_small_batch_cifar10.yaml")]):
        p = run_snakemake(tmp_path, "-n", "--quiet", "rules", "--cores", "1", *extra, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "train" in p.stdout  # the DAG has training jobs


def test_experiment_configfile_replaces_the_default(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    p = run_snakemake(tmp_path, "-n", "--cores", "1", "--configfile",
                      str(ROOT / "config/experiments/bjorck_resnet110.yaml"))
    assert p.returncode == 0, p.stderr
    assert "results/bjorck/summary.parquet" in p.stdout
    assert "results/lr_bs_sweep" not in p.stdout  # the default's studies are not merged in


def test_lint_is_clean(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    p = run_snakemake(tmp_path, "--lint", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Lints for" not in p.stdout + p.stderr


def test_snakefmt_is_clean():
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    # plain `snakefmt --check`, as a user types it: the settings are pyproject.toml's [tool.snakefmt]
    p = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *map(str, files)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


def test_bad_config_fails_before_any_job_in_one_line(tmp_path):
    bad = {**TINY, "studies": {"lr_bs_sweep": {"grid": {**TINY["studies"]["lr_bs_sweep"]["grid"],
                                                         "norm": ["bn", "batchnorm"]}}}}
    p = run_snakemake(workdir_with(tmp_path, bad), "--cores", "1")
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert err[-1] == ("normbench: config error in config/config.yaml: studies.lr_bs_sweep.grid.norm: norm type "
                       "'batchnorm' is unknown; valid: bn, brn, dyt, evonorm_b0, evonorm_s0, frn, gn, in, ln, lp_bn, noisy_bn, none, rms, sn, wn (or "
                       "'package.module:Name' for your own); or an entry under norms: gn")
    assert "Traceback" not in p.stderr and "common.smk" not in p.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path):
    wd = workdir_with(tmp_path, TINY)
    p = run_snakemake(wd, "--cores", "2", "results/lr_bs_sweep/summary.parquet")
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"8 runs trained, .* useful-compute fraction \d\.\d\d", p.stdout + p.stderr)
    summary = pq.read_table(wd / "results/lr_bs_sweep/summary.parquet", partitioning=None)
    metrics = pq.read_table(wd / "results/lr_bs_sweep/metrics.parquet", partitioning=None)
    assert summary.schema.equals(SUMMARY_SCHEMA) and metrics.schema.equals(METRICS_SCHEMA)
    s, m = summary.to_pandas(), metrics.to_pandas()
    grid = 2 * 2 * 2  # norm × lr × seed
    assert len(s) == grid and sorted(s.lr.unique()) == [0.01, 0.1] and s.batch_size.dtype == "int64"
    # recorded steps 0, 10, 20: test loss+acc at each, train loss+acc at 10 and 20
    assert len(m) == grid * (3 * 2 + 2 * 2)
    assert m.groupby(["norm", "lr", "seed"]).size().eq(10).all()
    assert len(list((wd / "logs/train").rglob("*.log"))) == 2  # two packs (bn, gn), a log each
    p = run_snakemake(wd, "--cores", "2", "-n", "results/lr_bs_sweep/summary.parquet")
    assert p.returncode == 0 and "Nothing to be done" in p.stdout + p.stderr  # a second run has nothing to do
    # the claims, the reports and the self-contained HTML report
    p = run_snakemake(wd, "--cores", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "useful-compute fraction" not in p.stdout + p.stderr  # only reports ran: nothing to measure
    claims = pq.read_table(wd / "results/lr_bs_sweep/claims.parquet").to_pandas()
    assert list(claims.claim) == ["bn_larger_lr"] and claims.verdict.iloc[0] in ("reproduced", "not reproduced",
                                                                                  "inconclusive")
    index = (wd / "reports/index.md").read_text()
    assert index.index("bn_larger_lr") < index.index("## Studies") if "bn_larger_lr" in index else True
    assert "| study" in index.split("## Studies")[0]  # the claims table tops the index
    p = run_snakemake(wd, "--cores", "1", "--report", "reports/report.html")
    assert p.returncode == 0, p.stderr[-3000:]
    html = (wd / "reports/report.html").read_text()
    finding = json.loads((wd / "reports/lr_bs_sweep/finding.json").read_text())["finding"]
    escaped = lambda text: json.dumps(text)[1:-1]  # noqa: E731 (the report embeds its data as JSON)
    assert escaped("Learning rate × batch size") in html and escaped("largest lr at which every seed trained") in html
    assert finding.startswith("largest lr at which every seed trained")
    assert "<script src=\"http" not in html  # opens offline
    for ext in ("png", "svg"):
        assert (wd / f"reports/lr_bs_sweep/heatmaps.{ext}").stat().st_size > 0
    # captions are declared outputs (and targets): a deleted one is rebuilt, not a broken --report
    shutil.rmtree(wd / "reports/lr_bs_sweep/captions")
    p = run_snakemake(wd, "--cores", "1", "-n")
    assert "report_lr_bs_sweep" in p.stdout and "Missing output files: reports/lr_bs_sweep/captions" in p.stdout


USER_NORM = '''
import torch


class RMSNorm2d(torch.nn.Module):
    """Root-mean-square normalization over channels, per position (no centring)."""

    def __init__(self, num_features, dim=2, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_features))

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x / x.pow(2).mean(1, keepdim=True).add(self.eps).sqrt() * self.weight.view(shape)
'''


@pytest.mark.slow
def test_a_normalizer_from_a_file_outside_the_package_runs_through_a_study(tmp_path):
    """The README's example: your own norm class, named in the config, no edit to normbench."""
    (tmp_path / "mynorms.py").write_text(USER_NORM)
    config = {**TINY, "norms": {"rms": {"type": "mynorms.py:RMSNorm2d", "options": {"eps": 1e-5}}},
              "studies": {"lr_bs_sweep": {"grid": {**TINY["studies"]["lr_bs_sweep"]["grid"], "norm": ["bn", "rms"],
                                                   "lr": [0.1], "seed": [0]}}}}
    wd = workdir_with(tmp_path, config)
    p = run_snakemake(wd, "--cores", "2", "results/lr_bs_sweep/summary.parquet")
    assert p.returncode == 0, p.stderr[-3000:]
    s = pq.read_table(wd / "results/lr_bs_sweep/summary.parquet").to_pandas().set_index("norm")
    assert s.loc["rms", "norm_type"] == "mynorms.py:RMSNorm2d" and json.loads(s.loc["rms", "norm_options"]) == {"eps": 1e-5}
    m = pq.read_table(wd / "results/lr_bs_sweep/metrics.parquet").to_pandas()
    loss = m[(m.norm == "rms") & (m.split == "test") & (m.metric == "loss")].sort_values("step").value
    assert not s.loc["rms", "diverged"] and loss.iloc[-1] < loss.iloc[0]  # it trained
    # a typo in its option is caught before any job, like a built-in's
    config["norms"]["rms"]["options"] = {"epsilon": 1e-5}
    p = run_snakemake(workdir_with(tmp_path, config), "--cores", "1", "-n")
    assert p.returncode != 0 and "norms.rms: norm 'mynorms.py:RMSNorm2d': unknown option(s) epsilon" in p.stderr


TOY_STUDY = '''
"""A toy study: does BN beat GN on digits in a few steps?"""
from ..analysis import paired, summarize
from ..claims import Claim, greater
from ..report import Report
from ..study import Study


def build(s, m):
    r = Report(STUDY)
    t = summarize(s, ["norm_type"], "final_test_acc")
    r.finding = f"{len(s)} runs"
    r.table("accuracy", t, "Test accuracy per norm.")
    return r


def _bn_beats_gn(s, m):
    return greater(paired(s, "final_test_acc", "norm_type", "bn", "gn", ["seed"]), "test accuracy, BN − GN")


STUDY = Study(name="toy", title="A toy study", question="BN or GN?", source="nobody", build=build,
              tables={"accuracy": "norm"}, figures={},
              claims=(Claim("bn_beats_gn", "BN beats GN", "a toy", _bn_beats_gn),))
'''


@pytest.mark.slow
def test_adding_a_study_is_one_new_module_plus_config(tmp_path):
    """A copy of the workflow with one new file in normbench/studies/ and a config block runs the
    study end to end: training, claims, report, index -- no other package file changes."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "workflow", repo / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "envs", repo / "envs")
    shutil.copy(ROOT / "Snakefile", repo / "Snakefile")
    before = {p.relative_to(repo): p.read_bytes() for p in (repo / "workflow/normbench").rglob("*.py")}
    (repo / "workflow/normbench/studies/toy.py").write_text(TOY_STUDY)
    config = {**TINY, "studies": {"toy": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn", "gn"],
                                                   "batch_size": [16], "lr": [0.1], "seed": [0, 1, 2]}}}}
    wd = workdir_with(tmp_path / "wd", config)
    env = {**os.environ, "PYTHONPATH": str(repo / "workflow")}  # the copy's package, not the installed one
    p = run_snakemake(wd, "--cores", "2", snakefile=repo / "Snakefile", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    claims = pq.read_table(wd / "results/toy/claims.parquet").to_pandas()
    assert list(claims.claim) == ["bn_beats_gn"]
    assert "A toy study" in (wd / "reports/index.md").read_text()
    assert (wd / "reports/toy/accuracy.csv").exists()
    after = {p.relative_to(repo): p.read_bytes() for p in (repo / "workflow/normbench").rglob("*.py")}
    assert set(after) - set(before) == {Path("workflow/normbench/studies/toy.py")}
    assert all(after[k] == v for k, v in before.items())


@pytest.mark.slow
def test_the_workflow_as_a_module_of_another(tmp_path):
    """An outer Snakefile that uses normbench as a module (from a path) runs a small study."""
    outer = tmp_path / "outer"
    workdir_with(outer, {"normbench": TINY})
    (outer / "Snakefile").write_text(
        f'configfile: "config/config.yaml"\n\n\n'
        f'module normbench:\n    snakefile:\n        "{ROOT / "Snakefile"}"\n    config:\n        config["normbench"]\n\n\n'
        f'use rule * from normbench as normbench_*\n\n\n'
        f'rule all:\n    input:\n        "results/lr_bs_sweep/claims.parquet",\n'
        f'    default_target: True\n')
    p = run_snakemake(outer, "--cores", "2", snakefile=outer / "Snakefile")
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    s = pq.read_table(outer / "results/lr_bs_sweep/summary.parquet").to_pandas()
    assert len(s) == 8 and (outer / "results/lr_bs_sweep/claims.parquet").exists()
    assert "normbench_train" in p.stdout + p.stderr  # the module's rules, renamed, did the work


def test_a_smoke_check_of_the_real_data_tier_is_small_and_stays_out_of_the_real_results(tmp_path):
    """`--config smoke=true` (a string to Snakemake): every run a few steps on the first test examples,
    results and reports under results-smoke/, the real folders never named."""
    from normbench import config as nb_config
    from normbench.launcher import check_config
    from normbench.pipeline import SMOKE_EVAL, SMOKE_STEPS, Pipeline

    tier = ROOT / "config/experiments/realdata_fashion_mnist.yaml"
    config = check_config(str(tier), ROOT / "Snakefile", ["--config", "smoke=true", "download=false"])
    assert config["smoke"] is True and config["download"] is False
    pipe = Pipeline.from_config(config, check_files=False)
    assert (pipe.results, pipe.reports) == ("results-smoke", "results-smoke/reports")
    full = Pipeline.from_config(nb_config.load(tier), check_files=False)
    for name, st in pipe.studies.items():
        assert len(st.runs) == len(full.studies[name].runs)  # every run of the tier, each of them small
        for row in st.runs.drop_duplicates("_grid").to_dict("records"):
            c, real = pipe.run_config(name, row), full.run_config(name, row)
            assert (c.steps, c.epochs, c.eval_examples) == (min(SMOKE_STEPS, real.steps), None, SMOKE_EVAL)
            assert c.eval_every <= SMOKE_STEPS and all(p < SMOKE_STEPS for p in c.probe_at)
            assert (c.probe_every > 0) == (real.probe_every > 0) and c.probes == real.probes
            assert (c.model_options, c.norm_options, c.workers) == (real.model_options, real.norm_options,
                                                                    real.workers)
    assert (full.results, full.reports) == ("results", "reports")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    p = run_snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(tier), "--config", "smoke=true",
                      timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "results-smoke/reports/index.md" in out, out[-3000:]
    # nothing of the real folders (the data's download log is the data folder's, shared)
    assert not re.search(r"(?<![-\w/])(results/|reports/|logs/(?!download/))", out)
