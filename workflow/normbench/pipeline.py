"""From the user's config to runs, packs and paths; validation before any job.

The Snakefile calls ``load_config`` (or ``Pipeline.from_config`` after its own
``validate``) and asks the ``Pipeline`` for targets.  Every check here raises a
``ConfigError`` whose message starts with the config key at fault.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from .config import RunConfig
from .norms import NORMS, ConfigError, resolve_options
from .store import PARAM_COLUMNS, aggregate_runs
from .studies import STUDIES, check_study

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
GRID_COLUMNS = [c for c in PARAM_COLUMNS if c != "study"]  # lr, seed last: a pack is a path prefix
PACKED_OUT = ("lr", "seed")  # runs differing only in these share a pack

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def coerce_numbers(obj):
    """PyYAML reads 1e-3 (no dot) as a string; make such strings numbers, in place."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = coerce_numbers(v)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            obj[i] = coerce_numbers(v)
    elif isinstance(obj, str) and _NUMBER.match(obj.strip()):
        return float(obj)
    return obj


@contextlib.contextmanager
def at_key(key: str):
    """Prefix ConfigErrors raised inside with the config key being checked."""
    try:
        yield
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(key) else f"{key}: {msg}") from None


def validate_schema(config: dict) -> dict:
    """JSON-schema validation (fills defaults), with the failing key in the message."""
    import jsonschema
    from snakemake.utils import validate

    try:
        validate(config, str(SCHEMA), set_default=True)
    except Exception as e:
        cause = e.__cause__ if isinstance(e.__cause__, jsonschema.ValidationError) else None
        if cause is None:
            try:
                jsonschema.validate(config, yaml.safe_load(SCHEMA.read_text()))
            except jsonschema.ValidationError as ve:
                cause = ve
        if cause is not None:
            key = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
            raise ConfigError(f"{key}: {cause.message}") from None
        raise ConfigError(str(e)) from None
    return config


@dataclass
class Named:
    """A config entry ``id: {type, options}`` (norms, models)."""

    type: str
    options: dict = field(default_factory=dict)
    label: str | None = None
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
    paths: list[str] = field(default_factory=list)  # hive path of each run (row order)
    pack_ids: list[str] = field(default_factory=list)  # its pack (row order)

    def __post_init__(self):
        from snakemake.utils import Paramspace  # the same hive-path writer the rules document

        cols = [c for c in GRID_COLUMNS if c not in self.pack]
        self.paths = list(Paramspace(self.runs[GRID_COLUMNS], param_sep="=").instance_patterns)
        self.pack_ids = list(Paramspace(self.runs[cols], param_sep="=").instance_patterns)


@dataclass
class Pipeline:
    studies: dict[str, StudyConfig]
    norms: dict[str, Named]
    models: dict[str, Named]
    device: str = "auto"
    data_dir: str = "resources"
    download: bool = True
    results: str = "results"
    _packs: dict = field(default_factory=dict, repr=False)
    _jobs: dict = field(default_factory=dict, repr=False)

    # -- construction ----------------------------------------------------------

    @classmethod
    def from_config(cls, config: dict, results: str = "results", check_files: bool = True) -> "Pipeline":
        norms = {k: Named(v["type"], dict(v.get("options") or {}), v.get("label"))
                 for k, v in (config.get("norms") or {}).items()}
        models = {k: Named(v["type"], dict(v.get("options") or {}), v.get("label"), v.get("init"))
                  for k, v in (config.get("models") or {}).items()}
        self = cls({}, norms, models, config.get("device", "auto"), config.get("data_dir", "resources"),
                   config.get("download", True), results)
        self._check_tables()
        for name, st in config["studies"].items():
            with at_key(f"studies.{name}"):
                check_study(name)
            if not st.get("enabled", True):
                continue
            grids = st["grid"] if isinstance(st["grid"], list) else [st["grid"]]
            base = {**(config.get("train") or {}), **(st.get("train") or {})}
            train = [{**base, **(g.get("train") or {})} for g in grids]
            runs = pd.concat([self._expand(name, g).assign(_grid=i) for i, g in enumerate(grids)],
                             ignore_index=True)
            if runs[GRID_COLUMNS].duplicated().any():
                dup = runs[runs[GRID_COLUMNS].duplicated()].iloc[0][GRID_COLUMNS].to_dict()
                raise ConfigError(f"studies.{name}.grid: two grids give the same run {dup}")
            self.studies[name] = StudyConfig(
                name, runs, _pack_columns(name, st.get("pack", True)), train, st.get("threads", config.get("threads", 1)),
                st.get("mem_mb", config.get("mem_mb", 2000)), st.get("runtime", config.get("runtime", 60)))
            self._check_study(self.studies[name])
        if not self.studies:
            raise ConfigError("studies: every study is disabled; enable at least one")
        if check_files:
            self._check_files()
        return self

    def _check_tables(self):
        from .models import model_spec, resolve_model_options
        from .norms import norm_spec

        for nid, n in self.norms.items():
            with at_key(f"norms.{nid}"):
                norm_spec(n.type)
                resolve_options(n.type, n.options)
        for mid, m in self.models.items():
            with at_key(f"models.{mid}"):
                model_spec(m.type)
                resolve_model_options(m.type, m.options)

    def _expand(self, study: str, grid: dict) -> pd.DataFrame:
        """The grid's cartesian product; an lr rule is applied per batch size."""
        grid = {"placement": ["pre"], "activation": ["relu"], **grid}
        for key in GRID_COLUMNS:
            if key != "lr" and not grid.get(key):
                raise ConfigError(f"studies.{study}.grid.{key}: the grid is empty (give at least one value)")
        fixed = [c for c in GRID_COLUMNS if c != "lr"]
        rows = []
        for combo in itertools.product(*(grid[c] for c in fixed)):
            row = dict(zip(fixed, combo))
            for lr in self._lrs(study, grid["lr"], row["batch_size"]):
                rows.append({**row, "lr": lr})
        df = pd.DataFrame(rows, columns=GRID_COLUMNS)
        if df.duplicated().any():
            raise ConfigError(f"studies.{study}.grid: repeated values give duplicate runs")
        return df

    @staticmethod
    def _lrs(study: str, spec, batch_size: int) -> list[float]:
        if isinstance(spec, dict):
            bases = spec["base"] if isinstance(spec["base"], list) else [spec["base"]]
            return [canonical_float(b * batch_size / spec["reference_batch"]) for b in bases]
        if not spec:
            raise ConfigError(f"studies.{study}.grid.lr: the grid is empty (give at least one value)")
        return [canonical_float(v) for v in spec]

    def _check_study(self, st: StudyConfig):
        """Build every distinct configuration once (on the meta device: no memory, no data)."""
        import torch

        from .data import SHAPES, TRAIN_SIZES, check_dataset_name
        from .models import NormAct, build_model, check_forward

        key = f"studies.{st.name}"
        if STUDIES[st.name].runner == "linear_gd":
            from .feature_scaling import check

            for row in st.runs.to_dict("records"):
                with at_key(f"{key}.grid"):
                    check(row["norm"], self.model(row["model"], f"{key}.grid.model").type, row["dataset"])
            return
        for train in st.train:
            with at_key(f"{key}.train"):
                RunConfig.from_dict(train)
        seen = set()
        for row in st.runs.drop(columns=["lr", "seed"]).drop_duplicates().to_dict("records"):
            with at_key(f"{key}.grid.dataset"):
                check_dataset_name(row["dataset"])
            with at_key(f"{key}.grid.batch_size"):
                if row["batch_size"] > TRAIN_SIZES[row["dataset"]]:
                    raise ConfigError(f"{row['batch_size']} exceeds the {TRAIN_SIZES[row['dataset']]} training "
                                      f"examples of {row['dataset']}")
            norm, model = self.norm(row["norm"], f"{key}.grid.norm"), self.model(row["model"], f"{key}.grid.model")
            sig = (row["model"], row["dataset"], row["norm"], row["placement"], row["activation"], row["_grid"])
            if sig in seen:
                continue
            seen.add(sig)
            with at_key(f"{key}.grid"):
                init = model.init or st.train[row["_grid"]].get("init", "default")
                na = NormAct(norm.type, norm.options, row["activation"], row["placement"], init)
                shape, _, outputs = SHAPES[row["dataset"]]
                try:
                    with torch.device("meta"):
                        net = build_model(model.type, shape, outputs, na, model.options)
                        check_forward(net, shape, f"model {row['model']!r}")
                except ConfigError as e:
                    raise ConfigError(
                        f"model {row['model']!r} with norm {row['norm']!r} on {row['dataset']}: {e}") from None

    def _check_files(self):
        from .data import TORCHVISION, missing_files

        for name in sorted(self.datasets()):
            if name in TORCHVISION and not self.download:
                missing = missing_files(name, self.data_dir)
                if missing:
                    raise ConfigError(
                        f"download: false, but dataset {name!r} is not in {self.data_dir}/{name} "
                        f"({missing[0]} is missing). Set download: true, run `normbench download {name} "
                        f"--data-dir {self.data_dir}` on a machine with network, or copy the files there")

    def norm(self, nid: str, key: str = "norm") -> Named:
        return _named(nid, self.norms, NORMS, "norms", key)

    def model(self, mid: str, key: str = "model") -> Named:
        from .models import MODELS

        return _named(mid, self.models, MODELS, "models", key)

    # -- targets -----------------------------------------------------------------

    def datasets(self) -> set[str]:
        return {d for st in self.studies.values() for d in st.runs.dataset}

    def packs(self, study: str) -> dict[str, list[int]]:
        """pack id -> row numbers of its runs.  A pack id is the run path without
        lr and seed (or the whole run path when the study is not packed)."""
        if study not in self._packs:
            out: dict[str, list[int]] = {}
            for i, pid in enumerate(self.studies[study].pack_ids):
                out.setdefault(pid, []).append(i)
            self._packs[study] = out
        return self._packs[study]

    def pack_marker(self, study: str, pack: str) -> str:
        return f"{self.results}/{study}/packs/{pack}/pack.json"

    def markers(self, study: str) -> list[str]:
        return [self.pack_marker(study, p) for p in self.packs(study)]

    def run_dirs(self, study: str) -> list[str]:
        return [f"{self.results}/{study}/runs/{p}" for p in self.studies[study].paths]

    def run_config(self, study: str, row: dict) -> RunConfig:
        st = self.studies[study]
        runner = STUDIES[study].runner
        norm = self.norm(row["norm"]) if runner == "network" else Named(row["norm"])
        model = self.model(row["model"])
        train = st.train[int(row["_grid"])]
        return RunConfig.from_dict({
            **train, **({"init": model.init} if model.init else {}),
            **{k: _plain(row[k]) for k in GRID_COLUMNS}, "study": study,
            "norm_type": norm.type, "norm_options": norm.options,
            "model_type": model.type, "model_options": model.options,
            "device": self.device, "data_dir": self.data_dir, "threads": st.threads, "runner": runner,
        })

    def pack_jobs(self, study: str, pack: str) -> list[dict]:
        """What the training job needs: each run's full config and its paths."""
        key = (study, pack)
        if key not in self._jobs:
            runs, dirs = self.studies[study].runs, self.run_dirs(study)
            self._jobs[key] = [
                {"config": self.run_config(study, runs.iloc[i].to_dict()).to_dict(), "out": dirs[i],
                 "checkpoint": dirs[i].replace("/runs/", "/checkpoints/", 1) + "/checkpoint.pt"}
                for i in self.packs(study)[pack]]
        return self._jobs[key]

    def gpu(self) -> int:
        if self.device.startswith("cuda"):
            return 1
        if self.device == "auto":
            import torch

            return int(torch.cuda.is_available())
        return 0


def _named(name: str, table: dict, registry: dict, what: str, key: str) -> Named:
    """A config entry by id, else a bare registry type, else an error listing both."""
    if name in table:
        return table[name]
    if name in registry:
        return Named(name)
    raise ConfigError(f"{key}: {name!r} is neither a {what} entry nor a registry type; valid: "
                      f"{', '.join(sorted(set(table) | set(registry)))}")


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


def load_config(path: str | Path | dict, results: str = "results", check_files: bool = True) -> Pipeline:
    config = path if isinstance(path, dict) else yaml.safe_load(Path(path).read_text())
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config must be a mapping with a 'studies' key")
    coerce_numbers(config)
    validate_schema(config)
    return Pipeline.from_config(config, results, check_files)


def aggregate_study(pipe: Pipeline, study: str, results: str | None = None) -> tuple[int, int]:
    """Concatenate the study's runs into results/<study>/{summary,metrics}.parquet."""
    results = results or pipe.results
    dirs = [Path(results) / Path(d).relative_to(pipe.results) for d in pipe.run_dirs(study)]
    return aggregate_runs(dirs, Path(results) / study / "summary.parquet", Path(results) / study / "metrics.parquet")


__all__ = ["Pipeline", "StudyConfig", "load_config", "aggregate_study", "coerce_numbers", "validate_schema",
           "GRID_COLUMNS"]
