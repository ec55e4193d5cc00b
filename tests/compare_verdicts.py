"""Print every claim's verdict from two or more results folders side by side (e.g. the default seeds
and `--config seed_offset=100`, or a CPU and a GPU run) and exit 1 if any verdict differs.

    python tests/compare_verdicts.py results /tmp/other/results
"""

import sys
from pathlib import Path

import pandas as pd


def verdicts(results: str) -> pd.Series:
    files = sorted(Path(results).glob("*/claims.parquet"))
    claims = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return claims.set_index(["study", "claim"]).verdict


def main(folders: list[str]) -> int:
    table = pd.concat({f: verdicts(f) for f in folders}, axis=1)
    table["same"] = table.nunique(axis=1, dropna=False) == 1
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table.to_string())
    print(f"{int(table.same.sum())} of {len(table)} verdicts agree")
    return 0 if table.same.all() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
