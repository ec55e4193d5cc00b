"""``normbench evaluate NORM`` and ``normbench leaderboard``: report cards for normalizers.

Writes a config that puts the normalizers under test beside the baselines (bn, gn, ln, none) in the
arm each study declares for the card (``Study.card``, ``normbench.scoring``), and runs it through the
same pipeline (``launcher.run``: the lock, Snakemake, resume).  Nothing here trains and nothing here
names a study: the arms come from the study registry.

Baselines are trained once.  Every card and the leaderboard of one tier share one results root,
``results/evaluate/<tier>/`` (``default`` for the embedded default, else the ``--configfile``'s
name), and every norm's runs are packs of their own: a run whose settings match a finished one (its
settings fingerprint, ``Job.done``) is never trained again, so a second card trains only its own
normalizer, and the leaderboard only the normalizers no card has trained yet.

Each arm is derived from the tier's block of its study (the embedded default, or a ``--configfile``
tier): its model, data, lrs, seeds and train settings; every arm is a conv net, so conv-only
normalizers (instance norm, FRN, EvoNorm) enter too.  Arms that sweep lrs (``scoring.Tune``) get
enough seeds to choose on some and measure on the others.
"""

from __future__ import annotations

import copy
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import config as config_file
from .card import card_arms
from .errors import ConfigError
from .norms import NORMS, norm_options
from .scoring import BASELINES, grids
from .store import write_text

RESULTS_ROOT, REPORTS_ROOT = "results/evaluate", "reports/evaluate"  # never the default pipeline's folders
DEFAULT_TIER = "default"
LEADERBOARD = "leaderboard"  # the leaderboard's folder beside the cards (no normalizer may take the name)
MEASURING_SEEDS = 3  # an arm that sweeps lrs measures each choice on at least this many seeds (paired t)
# a job per norm and arm: the runs of one norm are packed together (a card trains its own normalizer's
# packs only, and the baselines' packs are the same files for every card of the tier)
PACK = ["model", "dataset", "placement", "activation", "batch_size", "lr", "seed"]


@dataclass(frozen=True)
class Candidate:
    """A normalizer under test: its path-safe id and its config entry."""

    id: str
    type: str
    options: dict

    @property
    def entry(self) -> dict:
        return {"type": self.type, "options": dict(self.options)}


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


def tier_name(configfile: str | None) -> str:
    return DEFAULT_TIER if configfile is None else path_safe(Path(configfile).stem)


def _baseline_entry(name: str, base: dict) -> dict:
    entry = (base.get("norms") or {}).get(name) or {"type": name}
    return {"type": entry["type"], "options": norm_options(entry["type"], entry.get("options"))}


def check_ids(cands: list[Candidate], base: dict) -> None:
    """A normalizer under test may share an id with a baseline only if it is that baseline: runs live
    under their id in the shared root, and another layer under the same id would replace them."""
    for c in cands:
        if c.id == LEADERBOARD:
            raise ConfigError(f"norm id {c.id!r} is the leaderboard's folder: give the class another name")
        if c.id in BASELINES and _baseline_entry(c.id, base) != {"type": c.type, "options": norm_options(
                c.type, c.options)}:
            raise ConfigError(f"norm id {c.id!r} is a baseline's ({_baseline_entry(c.id, base)}), but names "
                              f"{c.type} {c.options}: give the class another name")


def battery(cands: list[Candidate], base: dict, trim: bool, tier: str = DEFAULT_TIER, name: str | None = None,
            skipped: dict[str, dict[str, str]] | None = None) -> dict:
    """The evaluate config: ``base`` (a loaded config) with the candidates beside the baselines in the
    arm of every study that declares one and that ``base`` has; every tier's cards share its results
    root; the card's settings (its norms, baselines, page, each arm's reading) under ``evaluate``.
    ``skipped``: study -> {norm: why} for candidates that cannot enter that arm (an arm left with no
    candidate is not run)."""
    base, skipped = copy.deepcopy(base), skipped or {}
    check_ids(cands, base)
    ids = [c.id for c in cands]
    baselines = [b for b in BASELINES if b not in ids]
    norms = {**(base.get("norms") or {}), **{c.id: c.entry for c in cands}}
    models, studies, arms = dict(base.get("models") or {}), {}, {}
    for study, arm in card_arms():
        if study not in base["studies"]:
            continue  # a tier without this study: the card says the axis was not run
        out = skipped.get(study, {})
        arms[study] = {"skipped": dict(out)} if out else {}
        entering = [i for i in ids if i not in out]
        if not entering:
            continue
        block = arm.build(base["studies"][study], base)
        block["pack"] = PACK
        models.update(block.pop("models", {}))
        info = {**dict(block.pop("card", {})), **arms[study]}
        cut = arm.trim if trim else {}
        block["train"] = {**(block.get("train") or {}), **cut.get("train", {})}
        for g in grids(block):
            g["norm"] = [*entering, *(b for b in baselines if b not in out)]
            seeds = list(g["seed"])[:cut.get("seeds", len(g["seed"]))]
            if arm.tune is not None:  # enough seeds to choose the lr on some and measure it on the others
                need = arm.tune.select + MEASURING_SEEDS
                seeds += [max(seeds) + 1 + i for i in range(need - len(seeds))]
            g["seed"] = seeds
        if arm.tune is not None:
            offset = int(base.get("seed_offset", 0))
            info["select"] = [s + offset for s in grids(block)[0]["seed"][:arm.tune.select]]
        studies[study] = block
        arms[study] = info
    if not arms:
        raise ConfigError(f"studies: none of the studies with a report-card arm "
                          f"({', '.join(s for s, _ in card_arms())}) is in the config")
    train = base.get("train") or {}
    page = name or (ids[0] if len(ids) == 1 else LEADERBOARD)
    keep = {k: v for k, v in base.items() if k not in ("norms", "models", "studies", "results", "evaluate")}
    return {**keep, "norms": norms, "models": models, "studies": studies,
            "results": f"{RESULTS_ROOT}/{tier}",
            "evaluate": {"norms": ids, "baselines": baselines, "page": LEADERBOARD if name == LEADERBOARD else "card",
                         "name": page, "reports": f"{REPORTS_ROOT}/{tier}/{page}", "arms": arms,
                         "dtype": train.get("dtype", "float32"), "bf16": bool(train.get("bf16", False))}}


def checked_battery(cands: list[Candidate], base: dict, trim: bool, tier: str = DEFAULT_TIER,
                    name: str | None = None) -> dict:
    """The battery, checked as every config is (each run built on the meta device, before any job); a
    candidate that cannot enter an arm (a layer that needs larger maps than the arm's net has, say)
    leaves that arm, with the error as the card's reason, instead of failing the whole card."""
    from .pipeline import Pipeline

    cfg = battery(cands, base, trim, tier, name)
    # every run structure checked once, each error kept (a pipeline per candidate and arm took the
    # leaderboard 40 s before Snakemake started); the only check of the structures: the launcher hands
    # Snakemake this config's digest (``config.checked_here``) and Snakemake does not build them again
    pipe = Pipeline.from_config(config_file.load(copy.deepcopy(cfg)), check_files=False, check_runs=False)
    ids, skipped = {c.id for c in cands}, {}
    for study in pipe.studies:
        for norm, why in pipe.failing(study).items():
            if norm not in ids:
                raise ConfigError(f"studies.{study}.grid: {why}")  # a baseline that cannot be built
            skipped.setdefault(study, {})[norm] = f"it cannot enter this arm's net: {why}"
    if skipped:
        cfg = battery(cands, base, trim, tier, name, skipped)
        if cfg["studies"]:
            Pipeline.from_config(config_file.load(copy.deepcopy(cfg)), check_files=False, check_runs=False)
    return cfg


# -- the normalizers already evaluated (the leaderboard's users' rows) ---------------------------------


def registry_dir(tier: str) -> Path:
    return Path(RESULTS_ROOT) / tier / "norms"


def remember(cand: Candidate, tier: str) -> None:
    """Record an evaluated normalizer for the leaderboard; an id already taken by another layer is an
    error (their runs would share folders)."""
    path = registry_dir(tier) / f"{cand.id}.yaml"
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        if old != cand.entry:
            raise ConfigError(f"norm id {cand.id!r} was evaluated as {old} in {path}; this one is {cand.entry}: "
                              f"give the class another name (or delete that file and the id's runs)")
        return
    write_text(yaml.safe_dump(cand.entry, sort_keys=True), path)


def evaluated(tier: str) -> list[Candidate]:
    return [Candidate(p.stem, **(yaml.safe_load(p.read_text()) or {}))
            for p in sorted(registry_dir(tier).glob("*.yaml"))]


def builtins(base: dict) -> list[Candidate]:
    """Every registered normalizer, as the tier's config names it (``gn``: its entry)."""
    return [candidate(n, None, base.get("norms")) for n in NORMS]


# -- writing and running ----------------------------------------------------------------------------


class _Plain(yaml.SafeDumper):
    def ignore_aliases(self, data):  # a config a person reads: no &id001 anchors
        return True


def _write(cfg: dict, what: str) -> Path:
    """Write the (checked) config under the results root; the same command writes the same file, so a
    rerun resumes."""
    path = Path(cfg["results"]) / "configs" / f"{cfg['evaluate']['name']}.yaml"
    text = f"# written by `normbench {what}` (normbench.evaluate)\n" + yaml.dump(cfg, Dumper=_Plain, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        write_text(text, path)
    return path


def load_base(configfile: str | None) -> dict:
    return config_file.load(configfile or config_file.default_config_path())


def write_battery(name: str, options: dict | None = None, configfile: str | None = None) -> tuple[Path, dict]:
    base = load_base(configfile)
    cand = candidate(name, options, base.get("norms"))
    cfg = checked_battery([cand], base, trim=configfile is None, tier=tier_name(configfile))
    return _write(cfg, "evaluate"), cfg


def leaderboard_battery(configfile: str | None, only: list[str] | None = None) -> tuple[Path, dict]:
    """Every built-in and every normalizer already evaluated on this tier (``only``: those named, BN
    always), each in every arm it can enter."""
    base, tier = load_base(configfile), tier_name(configfile)
    cands = {c.id: c for c in builtins(base) + evaluated(tier)}
    if only:
        unknown = sorted(set(only) - set(cands))
        if unknown:
            raise ConfigError(f"--norms: {', '.join(unknown)} is neither a registered normalizer nor one evaluated on "
                              f"this tier; choose from {', '.join(sorted(cands))}")
        cands = {k: c for k, c in cands.items() if k in {*only, "bn"}}
    cfg = checked_battery(list(cands.values()), base, trim=configfile is None, tier=tier, name=LEADERBOARD)
    return _write(cfg, "leaderboard"), cfg


def write_page(evaluate: dict, runs: dict, properties_file: str, cost_file: str, out: str | Path) -> str:
    """The page an evaluate config asks for -- a card or the leaderboard -- from the arms' run files,
    the properties and the cost table; its one-line summary."""
    from . import card, leaderboard
    from .store import read_parquet

    data = card.read({s: files for s, files in runs.items()})
    props = read_parquet(properties_file)
    cost = read_parquet(cost_file)
    if evaluate["page"] == LEADERBOARD:
        norms = [*evaluate["norms"], *evaluate["baselines"]]
        lb = leaderboard.build(norms, data, evaluate["arms"], props, cost)
        leaderboard.write(lb, out)
        return f"leaderboard of {len(norms)} normalizers -> {out}"
    result = card.build(evaluate["norms"][0], evaluate["baselines"], data, evaluate["arms"], props, cost)
    card.write(result, out)
    return "\n".join(f"{axis}: {line}" for axis, line in result["summary"].items())


def _launch(path: Path, cfg: dict, snakefile: str | None, extra: list[str], report: bool) -> tuple[int, float]:
    from .launcher import run as launch

    t0 = time.perf_counter()
    rc = launch(str(path), snakefile, extra, report=report, html=f"{cfg['evaluate']['reports']}/report.html",
                checked=cfg)  # checked_battery built every structure: Snakemake need not again
    return rc, time.perf_counter() - t0


def _dry(extra: list[str]) -> bool:
    return bool({"-n", "--dry-run", "--dryrun"} & set(extra))


def run(name: str, options: dict | None, configfile: str | None, snakefile: str | None, extra: list[str],
        report: bool = True) -> int:
    from . import card, properties

    base = load_base(configfile)
    cand = candidate(name, options, base.get("norms"))
    tier = tier_name(configfile)
    dtype = (base.get("train") or {}).get("dtype", "float32")
    t0 = time.perf_counter()
    props = properties.measure({cand.id: cand.entry}, dtype)
    print(f"normbench: properties of {cand.id} ({time.perf_counter() - t0:.1f} s, before any training):\n"
          + properties.summary(props), file=sys.stderr)
    broken = properties.forward_error(cand.type, cand.options, dtype)
    reports = f"{REPORTS_ROOT}/{tier}/{cand.id}"
    baselines = [b for b in BASELINES if b != cand.id]
    if broken:  # it cannot normalize a batch: no arm can train it, the card says so and why
        why = f"{cand.id} raises in its forward on an ordinary batch ({broken}): nothing was trained"
        card.write(card.unrunnable(cand.id, baselines, props, why), reports)
        print(f"normbench: {why}; report card: {reports}/README.md")
        return 0
    cfg = checked_battery([cand], base, trim=configfile is None, tier=tier)
    if not cfg["studies"]:  # it enters no arm: each arm's reason is on the card
        why = "; ".join(f"{s}: {i['skipped'][cand.id]}" for s, i in cfg["evaluate"]["arms"].items())
        card.write(card.unrunnable(cand.id, baselines, props, why), reports)
        print(f"normbench: {cand.id} enters no arm of the card ({why}); report card: {reports}/README.md")
        return 0
    path = _write(cfg, "evaluate")
    if not _dry(extra):
        remember(cand, tier)
    rc, wall = _launch(path, cfg, snakefile, extra, report)
    if rc == 0 and not _dry(extra):
        print(f"normbench: report card: {cfg['evaluate']['reports']}/README.md ({wall:.0f} s)")
    return rc


def leaderboard(configfile: str | None, snakefile: str | None, extra: list[str], report: bool = True,
                only: list[str] | None = None) -> int:
    from . import leaderboard as L

    t0 = time.perf_counter()
    path, cfg = leaderboard_battery(configfile, only)
    for study, info in cfg["evaluate"]["arms"].items():
        for nid, why in info.get("skipped", {}).items():
            print(f"normbench: {nid} is not measured in the {study} arm: {why}", file=sys.stderr)
    rc, _ = _launch(path, cfg, snakefile, extra, report)
    wall = time.perf_counter() - t0
    if rc == 0 and not _dry(extra):
        page = Path(cfg["evaluate"]["reports"])
        L.stamp(page, wall)
        n = len(cfg["evaluate"]["norms"]) + len(cfg["evaluate"]["baselines"])
        print(f"normbench: leaderboard of {n} normalizers: {page}/README.md "
              f"(measured: {wall:.0f} s wall, the whole command)")
    return rc


__all__ = ["BASELINES", "Candidate", "candidate", "battery", "write_battery", "leaderboard_battery", "run",
           "leaderboard", "write_page"]
