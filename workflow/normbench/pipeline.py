"""From a checked config to runs, packs, paths and jobs; every run validated
by its runner before any job starts.

The Snakefile asks a ``Pipeline`` for targets.  Every check raises a
``ConfigError`` whose message starts with the config key at fault.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import config as config_file
from .data import DATASETS
from .errors import ConfigError
from .mirrors import missing_files
from .models import model_options
from .norms import norm_options
from .runners import RUNNERS
from .settings import IDENTITY, RunConfig
from .store import aggregate_runs, checkpoint_dir, run_files
from .studies import STUDIES

GRID_COLUMNS = [c for c in IDENTITY if c != "study"]  # lr, seed last: a pack is a path prefix
PACKED_OUT = ("lr", "seed")  # by default runs differing only in these share a pack
PARAM_SEP = "~"  # run folders read model~cnn/…/seed~0: no key=value names for readers to mis-type


TOPUP_PREFIX = "topup/"  # pack ids of the runs the adaptive stage added

SMOKE_STEPS, SMOKE_EVAL = 6, 256  # `smoke: true`: steps per run, test examples per evaluation


def smoke_settings(train: dict) -> dict:
    """A run's train settings for a pipeline check: a few steps (a shorter run keeps its length), its
    evaluations, probes and warm-up scaled into them, evaluated on the first test examples.  It checks
    that data, networks, claims and reports work end to end, not what they measure."""
    half = SMOKE_STEPS // 2
    steps = SMOKE_STEPS if train.get("epochs") else min(train.get("steps", SMOKE_STEPS), SMOKE_STEPS)  # never longer
    t = {**train, "steps": steps, "epochs": None, "eval_every": min(train.get("eval_every", half), half),
         "eval_examples": SMOKE_EVAL, "probe_at": [1] if train.get("probe_at") else [], "checkpoint_every": 0}
    for key in ("probe_every", "warmup_steps", "rel_loss_steps"):
        if train.get(key):
            t[key] = min(train[key], half)
    return t


@contextlib.contextmanager
def at_key(key: str):
    """Prefix ConfigErrors raised inside with the config key being checked (the
    grid column itself when the error names one)."""
    try:
        yield
    except ConfigError as e:
        msg = str(e)
        if msg.startswith(key):
            raise
        sub = e.key or msg.split(":", 1)[0]
        if sub in GRID_COLUMNS and key.endswith(".grid"):
            full = f"{key}.{sub}"
            msg = msg[len(sub) + 1:].lstrip() if msg.startswith(f"{sub}:") else msg
        else:
            full = key
        raise ConfigError(f"{full}: {msg}") from None


@dataclass
class Named:
    """A config entry ``id: {type, options}`` (norms, models)."""

    type: str
    options: dict = field(default_factory=dict)
    init: str | None = None  # models only: overrides the study's train.init


@dataclass
class StudyConfig:
    name: str
    runs: pd.DataFrame  # one row per run: GRID_COLUMNS + "_grid" (which sub-grid it came from)
    pack: list[str]  # grid columns that vary inside one pack (one job); [] = a job per run
    train: list[dict]  # the train settings of each sub-grid
    threads: int
    mem_mb: int
    runtime: int
    max_seeds: int = 0  # the adaptive stage's cap (normbench.topup); 0: off
    paths: list[str] = field(default_factory=list)  # each run's folder path (row order)
    pack_ids: list[str] = field(default_factory=list)  # its pack (row order)
    topup_loaded: bool = False  # whether the adaptive stage's runs have been added to ``runs``

    def __post_init__(self):
        self.paths, self.pack_ids = self._locate(self.runs)

    def _locate(self, runs: pd.DataFrame, prefix: str = "") -> tuple[list[str], list[str]]:
        from snakemake.utils import Paramspace  # Snakemake's own writer of parameter paths

        cols = [c for c in GRID_COLUMNS if c not in self.pack]
        paths = list(Paramspace(runs[GRID_COLUMNS], param_sep=PARAM_SEP).instance_patterns)
        packs = (list(Paramspace(runs[cols], param_sep=PARAM_SEP).instance_patterns) if cols else ["all"] * len(runs))
        return paths, [prefix + p for p in packs]

    def add_runs(self, added: pd.DataFrame) -> None:
        """The adaptive stage's runs (grid columns), each trained with the settings of the base run it
        adds a seed to; their packs are ``topup/<pack>``, apart from the base packs."""
        self.topup_loaded = True
        if added.empty:
            return
        key = [c for c in GRID_COLUMNS if c != "seed"]
        grids = self.runs.drop_duplicates(key).set_index(key)["_grid"]
        rows = added[GRID_COLUMNS].copy()
        rows["_grid"] = [int(grids.loc[tuple(r)]) for r in rows[key].itertuples(index=False)]
        paths, packs = self._locate(rows, TOPUP_PREFIX)
        self.runs = pd.concat([self.runs, rows], ignore_index=True)
        self.paths += paths
        self.pack_ids += packs


@dataclass
class Pipeline:
    studies: dict[str, StudyConfig]
    norms: dict[str, Named]
    models: dict[str, Named]
    device: str = "auto"
    data_dir: str = "resources"
    download: bool = True
    results: str = "results"
    seed_offset: int = 0  # added to every grid's seeds (a fresh seed list for the same study)
    gpu_jobs: int = 1  # training jobs sharing one GPU
    _packs: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, config: dict, results: str = "results", check_files: bool = True,
                    check_runs: bool = True) -> "Pipeline":
        """``config`` as ``config.load`` returns it (schema-checked, defaults filled in); its
        ``results`` key (``normbench evaluate``'s own folder) wins over the argument.  ``check_runs``
        false skips the runners' checks (seconds of meta-device forwards): for a pipeline that
        Snakemake checks anyway, read only for its list of runs (the progress of `normbench run`), or
        checked norm by norm (``failing``)."""
        smoke = bool(config.get("smoke"))
        results = config_file.results_folder(config, results)
        norms = {k: Named(v["type"], dict(v.get("options") or {})) for k, v in (config.get("norms") or {}).items()}
        models = {k: Named(v["type"], dict(v.get("options") or {}), v.get("init"))
                  for k, v in (config.get("models") or {}).items()}
        self = cls({}, norms, models, config.get("device", "auto"), config.get("data_dir", "resources"),
                   config.get("download", True), results, int(config.get("seed_offset", 0)))
        self.gpu_jobs = int(config.get("gpu_jobs", 1))
        self._check_entries()
        for name, st in config["studies"].items():
            with at_key(f"studies.{name}"):
                STUDIES.get(name)
            if not st.get("enabled", True):
                continue
            grids = st["grid"] if isinstance(st["grid"], list) else [st["grid"]]
            base = {**(config.get("train") or {}), **(st.get("train") or {})}
            train = [{**base, **(g.get("train") or {})} for g in grids]
            if smoke:
                train = [smoke_settings(t) for t in train]
            runs = pd.concat([self._expand(name, g).assign(_grid=i) for i, g in enumerate(grids)], ignore_index=True)
            if runs[GRID_COLUMNS].duplicated().any():
                dup = runs[runs[GRID_COLUMNS].duplicated()].iloc[0][GRID_COLUMNS].to_dict()
                raise ConfigError(f"studies.{name}.grid: two grids give the same run {dup}")
            self.studies[name] = StudyConfig(
                name, runs, _pack_columns(name, st.get("pack", True)), train,
                st.get("threads", config.get("threads", 1)), st.get("mem_mb", config.get("mem_mb", 2000)),
                st.get("runtime", config.get("runtime", 60)), 0 if smoke else int(st.get("max_seeds", config.get("max_seeds", 0))))
            self._check_train(self.studies[name])
            if check_runs:
                self._check_study(self.studies[name])
        if not self.studies:
            raise ConfigError("studies: every study is disabled; enable at least one")
        if check_files:
            self._check_files()
        return self

    def _expand(self, study: str, grid: dict) -> pd.DataFrame:
        """The grid's cartesian product; an lr rule is applied per batch size."""
        grid = {"placement": ["pre"], "activation": ["relu"], **grid}
        fixed = [c for c in GRID_COLUMNS if c != "lr"]
        rows = []
        for combo in itertools.product(*(grid[c] for c in fixed)):
            row = dict(zip(fixed, combo))
            for lr in _lrs(grid["lr"], row["batch_size"]):
                rows.append({**row, "lr": lr})
        df = pd.DataFrame(rows, columns=GRID_COLUMNS)
        df["seed"] += self.seed_offset
        if df.duplicated().any():
            raise ConfigError(f"studies.{study}.grid: repeated values give duplicate runs")
        return df

    def _structures(self, st: StudyConfig) -> list[dict]:
        """One run of each distinct structure (lr and seed aside): what a runner's check reads."""
        return st.runs.drop_duplicates([c for c in GRID_COLUMNS if c not in PACKED_OUT] + ["_grid"]).to_dict("records")

    def failing(self, study: str) -> dict[str, str]:
        """norm -> why its runs of ``study`` cannot be built (the runner's check), every norm at once:
        for a page that drops a candidate from an arm it cannot enter instead of failing whole."""
        runner, out = RUNNERS.get(STUDIES.get(study).runner), {}
        for row in self._structures(self.studies[study]):
            if row["norm"] not in out:
                try:
                    runner.check(self.run_config(study, row))
                except ConfigError as e:
                    out[row["norm"]] = str(e)
        return out

    def _check_train(self, st: StudyConfig):
        for train in st.train:
            with at_key(f"studies.{st.name}.train"):
                RunConfig.from_dict(train)

    def _check_study(self, st: StudyConfig):
        """Every distinct run structure (lr and seed aside) checked once by its runner."""
        key = f"studies.{st.name}"
        runner = RUNNERS.get(STUDIES.get(st.name).runner)
        for row in self._structures(st):
            with at_key(f"{key}.grid.dataset"):
                DATASETS.get(row["dataset"])
            with at_key(f"{key}.grid"):
                try:
                    runner.check(self.run_config(st.name, row))
                except ConfigError as e:
                    entries = {"norm": self.norms, "model": self.models}.get(e.key or "")
                    if entries:  # a grid may also name the config's own entries
                        raise ConfigError(f"{e}; or an entry under {e.key}s: {', '.join(sorted(entries))}",
                                          e.key) from None
                    raise

    def _check_entries(self):
        """The config's own norm and model entries (layer normalizers and networks), each on its own."""
        for nid, n in self.norms.items():
            with at_key(f"norms.{nid}"):
                norm_options(n.type, n.options)
        for mid, m in self.models.items():
            with at_key(f"models.{mid}"):
                model_options(m.type, m.options)

    def _check_files(self):
        for name in sorted(self.downloads()):
            if not self.download and missing_files(name, self.data_dir):
                raise ConfigError(
                    f"download: false, but dataset {name!r} is not in {self.data_dir}/{name} "
                    f"({missing_files(name, self.data_dir)[0]} is missing). Set download: true, run "
                    f"`normbench download {name} --data-dir {self.data_dir}` on a machine with network, "
                    f"or copy the files there")

    # -- runs --------------------------------------------------------------------

    def run_config(self, study: str, row: dict) -> RunConfig:
        st = self.studies[study]
        norm, model = self.norms.get(row["norm"], Named(row["norm"])), self.models.get(row["model"], Named(row["model"]))
        train = st.train[int(row["_grid"])]
        return RunConfig.from_dict({
            **train, **({"init": model.init} if model.init else {}),
            **{k: _plain(row[k]) for k in GRID_COLUMNS}, "study": study,
            "norm_type": norm.type, "norm_options": norm.options,
            "model_type": model.type, "model_options": model.options,
            "device": self.device, "data_dir": self.data_dir, "threads": st.threads, "gpu_jobs": self.gpu_jobs,
            "runner": STUDIES.get(study).runner,
        })

    @property
    def reports(self) -> str:
        return config_file.reports_folder(self.results)

    def datasets(self) -> set[str]:
        return {d for st in self.studies.values() for d in st.runs.dataset}

    def downloads(self) -> set[str]:
        """Datasets whose files come from the network (the local download rule fetches them)."""
        return {d for d in self.datasets() if DATASETS.get(d).downloadable}

    # -- the adaptive stage ------------------------------------------------------------

    def topup_file(self, study: str) -> str:
        return f"{self.results}/{study}/topup.json"

    def load_topup(self, study: str, decision: dict | None = None) -> list[str]:
        """Add the runs of the study's adaptive-stage decision (once; its file must exist: the checkpoint
        wrote it; or ``decision``, read from a results folder elsewhere) and return their pack markers."""
        from . import topup

        st = self.studies[study]
        if not st.topup_loaded:
            decision = decision or topup.read(self.topup_file(study))
            if decision is None:
                raise FileNotFoundError(f"{self.topup_file(study)}: the adaptive stage of {study} has not run")
            st.add_runs(pd.DataFrame(decision["runs"], columns=GRID_COLUMNS))
            self._packs.pop(study, None)
        return [self.pack_marker(study, p) for p in self.packs(study) if p.startswith(TOPUP_PREFIX)]

    def base_files(self, study: str, kind: str) -> list[str]:
        """The base runs' ``summary`` or ``metrics`` files (what the first look reads)."""
        st = self.studies[study]
        return [str(run_files(self.results, study, p)[kind]) for p, pk in zip(st.paths, st.pack_ids)
                if not pk.startswith(TOPUP_PREFIX)]

    def packs(self, study: str) -> dict[str, list[int]]:
        """pack id -> row numbers of its runs.  A pack id is the run path without
        the packed columns (lr and seed by default); the adaptive stage's packs are ``topup/<pack>``."""
        if study not in self._packs:
            out: dict[str, list[int]] = {}
            for i, pid in enumerate(self.studies[study].pack_ids):
                out.setdefault(pid, []).append(i)
            self._packs[study] = out
        return self._packs[study]

    def pack_marker(self, study: str, pack: str) -> str:
        return f"{self.results}/{study}/packs/{pack}/pack.json"

    def checkpoint_dir(self, study: str, pack: str) -> str:
        return str(checkpoint_dir(self.results, study, pack))

    def markers(self, study: str, topup: bool = True) -> list[str]:
        """Every pack's marker (``topup=False``: the base packs' only)."""
        return [self.pack_marker(study, p) for p in self.packs(study) if topup or not p.startswith(TOPUP_PREFIX)]

    def files(self, study: str, kind: str) -> list[str]:
        """Every run's ``summary`` or ``metrics`` file (row order)."""
        return [str(run_files(self.results, study, p)[kind]) for p in self.studies[study].paths]

    def pack_jobs(self, study: str, pack: str) -> list[dict]:
        """What the training job needs: each run's full config and its files."""
        if pack.startswith(TOPUP_PREFIX):  # a job of its own (a cluster job re-reads the config)
            self.load_topup(study)
        st = self.studies[study]
        return [{"config": self.run_config(study, st.runs.iloc[i].to_dict()).to_dict(),
                 "files": {k: str(v) for k, v in run_files(self.results, study, st.paths[i]).items()}}
                for i in self.packs(study)[pack]]

    def pack_priority(self, study: str, pack: str) -> int:
        """A rough size of the pack's work, so that Snakemake starts the longest jobs first and no long
        job is left to run alone at the end: steps × runs (× 3 for a probed solo run).  A vectorized
        group counts every member: on the CPU a member-step costs about what a solo step does (measured
        on the default: 2.7 ms per member-step for the lr sweep's 25-member packs)."""
        from .runners.sgd import plan
        from .train import total_steps

        if pack.startswith(TOPUP_PREFIX):
            self.load_topup(study)
        cfgs = [self.run_config(study, self.studies[study].runs.iloc[i].to_dict()) for i in self.packs(study)[pack]]
        if cfgs[0].runner != "sgd":  # closed-form runs: milliseconds
            return 0
        cost = 0.0
        for group in plan(cfgs):
            c = cfgs[group[0]]
            steps = total_steps(c, DATASETS.get(c.dataset).n_train)
            cost += steps * (len(group) if len(group) > 1 else 3 if c.probes else 1)
        return int(cost // 1000)

    def gpu(self) -> int:
        if self.device.startswith("cuda"):
            return 1
        if self.device == "auto":
            import torch

            return int(torch.cuda.is_available())
        return 0


def _lrs(spec, batch_size: int) -> list[float]:
    if isinstance(spec, dict):
        bases = spec["base"] if isinstance(spec["base"], list) else [spec["base"]]
        return [canonical_float(b * batch_size / spec["reference_batch"]) for b in bases]
    return [canonical_float(v) for v in spec]


def _pack_columns(study: str, pack) -> list[str]:
    """true: runs differing in lr and seed share a job; a list names the columns."""
    if pack is True:
        return list(PACKED_OUT)
    if pack is False:
        return []
    bad = [c for c in pack if c not in GRID_COLUMNS]
    if bad:
        raise ConfigError(f"studies.{study}.pack: {bad[0]!r} is not a grid column; choose from {', '.join(GRID_COLUMNS)}")
    return list(pack)


def canonical_float(x) -> float:
    """Round away binary noise (0.1*8/32 -> 0.025) so paths and columns agree."""
    return float(f"{float(x):.12g}")


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def load_pipeline(source: str | Path | dict, results: str = "results", check_files: bool = True) -> Pipeline:
    """A config file (or dict) -> the checked pipeline; a ConfigError names what is wrong."""
    return Pipeline.from_config(config_file.load(source), results, check_files)


def aggregate_study(pipe: Pipeline, study: str) -> tuple[int, int]:
    """Concatenate the study's runs into results/<study>/{summary,metrics}.parquet."""
    out = Path(pipe.results) / study
    return aggregate_runs(pipe.files(study, "summary"), pipe.files(study, "metrics"),
                          out / "summary.parquet", out / "metrics.parquet")
