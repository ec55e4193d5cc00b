"""``normbench evaluate NORM``: a report card for any normalizer.

Writes a config that adds NORM beside the baselines (bn, gn, ln, none) to a battery of the
existing studies -- one arm per axis of the card -- and runs it through the same pipeline
(``launcher.run``: the lock, Snakemake, resume) under ``results/evaluate/<id>/``; the card
(``normbench.card``) reads across their Parquet into ``reports/evaluate/<id>/``.  Nothing here
trains: it is a config, so the runs are ordinary runs and SLURM/GPU profiles apply.

Each arm is derived from the base config's block of its study (the embedded default, or a
``--configfile`` tier): its model, data, lrs, seeds and train settings, with the grid's norms
replaced by NORM and the baselines.  Every arm NORM enters is a conv net, so conv-only
normalizers (instance norm, FRN, EvoNorm) can be evaluated too.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from . import config as config_file
from .errors import ConfigError
from .norms import norm_options
from .store import write_text

BASELINES = ("bn", "gn", "ln", "none")
RESULTS_ROOT, REPORTS_ROOT = "results/evaluate", "reports/evaluate"  # never the default pipeline's folders
CONV_TYPES = ("vgg", "resnet_cifar", "resnet18", "resnet50")  # models that keep spatial maps at every norm
DEEP_MODEL = "evaluate_deep_conv"
# the depth arm: a plain (no skip) conv net of 100 3×3 layers, as deep as the depth study's MLP; 8
# channels keep it CPU-sized (every normalizer, conv-only ones too, can enter it)
DEEP_LAYERS, DEEP_WIDTH = 100, 8
DEEP_LR = 0.01

# Trimmed settings for the embedded default only (a --configfile tier runs at its own scale), so
# that the whole battery, baselines included, fits in a few minutes on 2 CPU cores (about 400
# CPU-seconds in all, measured); each keeps what its axis needs to act.
TRIM = {
    # 250 → 150 steps: divergence shows early; 3 seeds × 2 batch sizes already give 6 pairs
    "lr_bs_sweep": {"seeds": 3, "train": {"steps": 150, "eval_every": 50}},
    # the same epochs at both batch sizes: enough that 8 workers × 32 images (67 steps) train too
    "gn_small_batch": {"train": {"epochs": 12, "eval_every": 500}},
    "depth_stats": {"train": {"steps": 40, "eval_every": 40, "probe_every": 40}},
    "santurkar": {"train": {"steps": 200, "eval_every": 100, "probe_every": 50}},  # 900 → 200 steps
}
SEEDS = 5  # at most, per arm at the default scale: the study's own seeds (paired t-intervals need ≥ 3)


@dataclass(frozen=True)
class Candidate:
    """The normalizer under test: its path-safe id and its config entry."""

    id: str
    type: str
    options: dict


def path_safe(text: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return safe if re.match(r"[A-Za-z]", safe) else f"norm_{safe}"


def candidate(name: str, options: dict | None = None, norms: dict | None = None) -> Candidate:
    """NORM as given (a registry name or ``module:Class`` / ``file.py:Class``) with its options,
    checked like a config entry (a typo'd option names the allowed ones); a bare name that is also
    a config entry (``gn``) means that entry."""
    options = dict(options or {})
    entry = (norms or {}).get(name) if not options and ":" not in name else None
    typ, opts = (entry["type"], dict(entry.get("options") or {})) if entry else (name, options)
    norm_options(typ, opts)  # unknown type, unknown option: ConfigError naming the allowed ones
    base = name.rpartition(":")[2] if ":" in name else name
    suffix = "_".join(f"{k}{v}" for k, v in sorted(options.items()))
    return Candidate(path_safe(f"{base}_{suffix}" if suffix else base), typ, opts)


def parse_options(items: list[str] | None) -> dict:
    return config_file.key_values(items, "--options")


# -- the arms: one per axis, each a block of an existing study ------------------------------------


def _grids(block: dict) -> list[dict]:
    return block["grid"] if isinstance(block["grid"], list) else [block["grid"]]


def _is_conv(model: str, models: dict) -> bool:
    return models.get(model, {"type": model})["type"] in CONV_TYPES


def _lr_arm(block: dict, base: dict) -> dict:
    """Learning-rate robustness: the sweep's CNN over its lr grid, at its batch sizes."""
    g = _grids(block)[0]
    return {"pack": ["norm", "lr", "seed"],  # a job per batch size: few process start-ups, both cores busy
            "grid": {"model": g["model"][:1], "dataset": g["dataset"][:1], "batch_size": g["batch_size"],
                     "lr": g["lr"], "seed": g["seed"]},
            "train": {**(block.get("train") or {}), **(g.get("train") or {})}}


def _batch_arm(block: dict, base: dict) -> dict:
    """Batch robustness: data-parallel workers each normalizing its own N images, at the study's
    largest and smallest N, lr = base·N/reference; a conv net (the lr arm's CNN if the study's
    own model is fully connected)."""
    grids = _grids(block)
    g = next((x for x in grids if isinstance(x["lr"], dict)), grids[0])
    model = g["model"][0]
    if not _is_conv(model, base.get("models") or {}):
        model = _grids(base["studies"]["lr_bs_sweep"])[0]["model"][0] if "lr_bs_sweep" in base["studies"] else model
    sizes = sorted({b for x in grids for b in x["batch_size"]})
    return {"pack": ["norm", "lr", "seed"],
            "grid": {"model": [model], "dataset": g["dataset"][:1], "batch_size": [sizes[-1], sizes[0]],
                     "lr": g["lr"], "seed": g["seed"]},
            "train": {**(block.get("train") or {}), **(g.get("train") or {})}}


def _depth_arm(block: dict, base: dict) -> dict:
    """Depth: activation std through 100 plain conv layers at init, and whether the net trains."""
    g = _grids(block)[0]
    train = {**(block.get("train") or {}), **(g.get("train") or {})}
    train = {**train, "probes": ["act_stats"], "probe_every": train.get("probe_every") or train.get("steps", 20)}
    return {"pack": ["norm", "seed"],
            "grid": {"model": [DEEP_MODEL], "dataset": g["dataset"][:1], "batch_size": g["batch_size"][:1],
                     "lr": [DEEP_LR], "seed": g["seed"]},
            "train": train}


def _smoothness_arm(block: dict, base: dict) -> dict:
    """Landscape smoothness: Santurkar's probed VGG (β_eff, gradient predictiveness), no ICS."""
    g = next(x for x in _grids(block) if "landscape" in {**(block.get("train") or {}), **(x.get("train") or {})}
             .get("probes", []))
    train = {**(block.get("train") or {}), **(g.get("train") or {}), "probes": ["landscape"]}
    return {"pack": ["norm", "seed"],
            "grid": {"model": g["model"][:1], "dataset": g["dataset"][:1], "batch_size": g["batch_size"][:1],
                     "lr": g["lr"][:1] if isinstance(g["lr"], list) else g["lr"], "seed": g["seed"]},
            "train": train}


@dataclass(frozen=True)
class Arm:
    axis: str
    study: str  # the existing study whose block, runner and data it reuses
    build: Callable[[dict, dict], dict]
    baselines: tuple | None = None  # None: every baseline


ARMS = (Arm("learning-rate robustness", "lr_bs_sweep", _lr_arm),
        Arm("batch robustness", "gn_small_batch", _batch_arm),
        Arm("depth", "depth_stats", _depth_arm),
        # probed runs train one by one: BN and no normalization, the paper's pair, bound the scale
        Arm("landscape smoothness", "santurkar", _smoothness_arm, ("bn", "none")))


def battery(cand: Candidate, base: dict, trim: bool, baselines=BASELINES) -> dict:
    """The evaluate config: ``base`` (a loaded config) with NORM beside the baselines in every arm
    whose study ``base`` has, separate results, and the card's settings under ``evaluate``."""
    base = copy.deepcopy(base)
    norms = {**(base.get("norms") or {}), cand.id: {"type": cand.type, "options": cand.options}}
    baselines = [b for b in baselines if b != cand.id]
    models = {**(base.get("models") or {}),
              DEEP_MODEL: {"type": "vgg", "options": {"layers": [DEEP_WIDTH] * DEEP_LAYERS}}}
    studies = {}
    for arm in ARMS:
        if arm.study not in base["studies"]:
            continue  # a tier without this study: the card says the axis was not run
        block = arm.build(base["studies"][arm.study], base)
        block["grid"]["norm"] = [cand.id, *(b for b in baselines if arm.baselines is None or b in arm.baselines)]
        if trim:
            cut = TRIM.get(arm.study, {})
            block["grid"]["seed"] = block["grid"]["seed"][:cut.get("seeds", SEEDS)]
            block["train"] = {**block["train"], **cut.get("train", {})}
        studies[arm.study] = block
    if not studies:
        raise ConfigError(f"studies: none of the evaluate battery's studies ({', '.join(a.study for a in ARMS)}) "
                          f"is in the config")
    keep = {k: v for k, v in base.items() if k not in ("norms", "models", "studies", "results", "evaluate")}
    return {**keep, "norms": norms, "models": models, "studies": studies,
            "results": f"{RESULTS_ROOT}/{cand.id}",
            "evaluate": {"norm": cand.id, "baselines": baselines, "reports": f"{REPORTS_ROOT}/{cand.id}"}}


def write_battery(name: str, options: dict | None = None, configfile: str | None = None) -> tuple[Path, dict]:
    """Build, check (every arm's runs built on the meta device: a norm that cannot enter an arm is
    an error here, before any job) and write the battery config under its results folder; the same
    command writes the same file, so a rerun resumes."""
    from .pipeline import load_pipeline

    base = config_file.load(configfile or config_file.default_config_path())
    cand = candidate(name, options, base.get("norms"))
    cfg = battery(cand, base, trim=configfile is None)
    load_pipeline(copy.deepcopy(cfg), check_files=False)
    path = Path(cfg["results"]) / "config.yaml"
    text = ("# written by `normbench evaluate`: NORM beside the baselines in the battery (normbench.evaluate)\n"
            + yaml.safe_dump(cfg, sort_keys=False))
    if not path.exists() or path.read_text() != text:
        write_text(text, path)
    return path, cfg


def run(name: str, options: dict | None, configfile: str | None, snakefile: str | None, extra: list[str],
        report: bool = True) -> int:
    from .launcher import run as launch

    path, cfg = write_battery(name, options, configfile)
    html = f"{cfg['evaluate']['reports']}/report.html"
    rc = launch(str(path), snakefile, extra, report=report, html=html)
    if rc == 0 and not {"-n", "--dry-run", "--dryrun"} & set(extra):
        print(f"normbench: report card: {cfg['evaluate']['reports']}/README.md")
    return rc


__all__ = ["BASELINES", "ARMS", "Candidate", "candidate", "battery", "write_battery", "run"]
