"""The user's config file: read (YAML errors with file and line), numbers
coerced, checked against the JSON schema (defaults filled in), every error one
message that names the file, the key, the value and the allowed values.

The schema and the embedded default config are package data (``normbench.schemas``
and ``normbench.defaults``), so an installed package works outside a checkout.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import json
from pathlib import Path

import yaml

from .errors import ConfigError
from .settings import coerce_numbers


def packaged(package: str, name: str) -> Path:
    """A file shipped with the package (in a checkout: the same file in the tree)."""
    try:
        path = Path(str(importlib.resources.files(package) / name))
        if path.exists():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    here = Path(__file__).resolve().parent  # running from a checkout without installing
    tree = {"normbench.schemas": here.parent / "schemas", "normbench.defaults": here.parents[1] / "config"}
    return tree[package] / name


def schema_path() -> Path:
    return packaged("normbench.schemas", "config.schema.yaml")


def default_config_path() -> Path:
    return packaged("normbench.defaults", "config.yaml")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping with a 'studies' key")
    return data


def _schema() -> dict:
    return yaml.safe_load(schema_path().read_text())


def _explain(error, schema: dict) -> str:
    """One line for a JSON-schema error: the key, the value, the allowed names."""
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator in ("oneOf", "anyOf") and error.context:
        # the branch that got furthest says most: deepest first, a wrong type of a whole branch last
        ctx = sorted(error.context, key=lambda e: (-len(e.absolute_path), e.validator == "type",
                                                   e.validator != "additionalProperties"))
        return _explain(ctx[0], schema)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        if allowed and extra:
            bad = extra[0]
            near = difflib.get_close_matches(bad, allowed, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            return f"{key}.{bad}: unknown key{hint}; allowed: {', '.join(allowed)}"
    if error.validator == "pattern" and error.schema.get("description"):  # the description names what is allowed
        return f"{key}: {error.instance!r} is not valid; allowed: {error.schema['description']}"
    return f"{key}: {error.message}"


def validate(config: dict) -> dict:
    """JSON-schema validation with defaults filled in (``snakemake.utils.validate``),
    the failing key and the allowed values in the message."""
    import jsonschema
    from snakemake.utils import validate as sm_validate

    schema = _schema()
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_explain(jsonschema.exceptions.best_match(errors), schema))
    sm_validate(config, str(schema_path()), set_default=True)  # fills the schema's defaults
    return config


def _booleans(config: dict) -> dict:
    """Snakemake reads ``--config smoke=true`` as the string "true" (only True/False are booleans to it):
    a top-level yes/no key given as true/false (any case) is the boolean it says."""
    flags = {k for k, v in _schema()["properties"].items() if v.get("type") == "boolean"}
    words = {"true": True, "false": False}
    return {k: words[v.lower()] if k in flags and isinstance(v, str) and v.lower() in words else v
            for k, v in config.items()}


def load(source: str | Path | dict) -> dict:
    """A config file (or an already-read dict), checked; defaults filled in."""
    config = source if isinstance(source, dict) else read_yaml(source)
    where = "" if isinstance(source, dict) else f"{source}: "
    config = _booleans(coerce_numbers(config))
    try:
        return validate(config)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


# set by a launcher that has just checked every run structure of the config it hands to Snakemake
CHECKED_ENV = "NORMBENCH_CHECKED"


def digest(config: dict) -> str:
    """The config's fingerprint, equal for a dict and the same dict read back from its YAML."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def checked_here(config: dict, environ: dict) -> bool:
    """Whether the launcher checked this very config (Snakemake's, --config overrides applied): its
    runners' checks (seconds of meta-device forwards) need not run again at the workflow's start."""
    return environ.get(CHECKED_ENV) == digest(config)


def results_folder(config: dict, default: str = "results") -> str:
    """Where a (checked) config's results go: its ``results`` key; results-smoke for a smoke check."""
    return config.get("results") or ("results-smoke" if config.get("smoke") else default)


def beside(results: str, folder: str) -> str:
    """Where a run's ``folder`` (reports, logs, benchmarks) goes: at the top for the default results
    folder, inside any other (a smoke check or `normbench evaluate` never overwrites the real run's)."""
    return folder if results == "results" else f"{results}/{folder}"


def reports_folder(results: str) -> str:
    return beside(results, "reports")


def key_values(items: list[str] | None, flag: str) -> dict:
    """``["k=v", …]`` from the command line -> {k: v}, each value read as YAML (numbers, lists, true)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out
