"""Every claim's verdict from several results folders side by side: the same studies on another
seed list, another instruction set, another thread count or another device must agree."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .claims import CLAIMS_SCHEMA
from .errors import ConfigError
from .store import read_parquet


def verdicts(results: str | Path) -> pd.Series:
    """(study, claim) -> verdict, from ``<results>/*/claims.parquet``."""
    files = sorted(Path(results).glob("*/claims.parquet"))
    if not files:
        raise ConfigError(f"{results}: no <study>/claims.parquet here; give a results folder of a finished run")
    claims = pd.concat([read_parquet(f, CLAIMS_SCHEMA) for f in files], ignore_index=True)
    return claims.set_index(["study", "claim"]).verdict


def compare(folders: list[str | Path]) -> pd.DataFrame:
    """One row per claim, one column per folder, and ``same``: whether every folder has the same
    verdict (a claim missing from a folder counts as a difference)."""
    table = pd.concat({str(f): verdicts(f) for f in folders}, axis=1)
    table["same"] = table.nunique(axis=1, dropna=False) == 1
    return table
