"""From aggregated Parquet to claims and reports (no training, no config).

``check_claims`` evaluates a study's claims into ``results/<study>/claims.parquet``;
``build_study`` writes ``reports/<study>/``; ``write_index`` puts every study's
claims in one table at the top of ``reports/index.md``; ``build_all`` does it
all again from ``results/`` alone (copy results back from a cluster, rebuild).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import topup
from .claims import CLAIMS_SCHEMA, evaluate
from .claims import CLAIM_RULE
from .report import seeds_text, test_text, write_claims
from .store import METRICS_SCHEMA, SUMMARY_SCHEMA, read_parquet, read_runs, write_text
from .studies import STUDIES


def _read(summary_path, metrics_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    s = read_parquet(summary_path, SUMMARY_SCHEMA)
    if s.empty:
        raise ValueError(f"{summary_path} holds no runs")
    return s, read_parquet(metrics_path, METRICS_SCHEMA)


def decide_topup(study: str, summaries: list, metrics: list, max_seeds: int, out_path) -> dict:
    """The adaptive stage's decision from the base runs' files (``normbench.topup``)."""
    if max_seeds <= 0:  # off: no first look to take
        decision = {"study": study, "max_seeds": 0, "claims": {}, "runs": []}
    else:
        s = read_runs(summaries, SUMMARY_SCHEMA).to_pandas()
        m = read_runs(metrics, METRICS_SCHEMA).to_pandas()
        decision = topup.plan(study, STUDIES.get(study).claims, s, m, max_seeds)
    topup.write(decision, out_path)
    return decision


def check_claims(study: str, summary_path, metrics_path, out_path, topup_path=None) -> pd.DataFrame:
    """The claims on the aggregated runs, each at its look: a claim decided on its base seeds is checked on
    the base runs alone, one that got seeds on every run (``topup.json`` beside the summary, if any)."""
    s, m = _read(summary_path, metrics_path)
    topup_path = topup_path or Path(summary_path).with_name("topup.json")
    claims = evaluate(study, STUDIES.get(study).claims, s, m, topup.looks(topup.read(topup_path)))
    write_claims(claims, out_path)
    return claims


def build_study(study: str, summary_path, metrics_path, claims_path, out_dir):
    st = STUDIES.get(study)
    s, m = _read(summary_path, metrics_path)
    rep = st.build(s, m)
    rep.claims = read_parquet(claims_path, CLAIMS_SCHEMA)
    rep.write(out_dir)
    return rep


def write_index(out_dir, studies: list[str], claims_paths: list, smoke: bool = False) -> Path:
    """``smoke``: a pipeline check (a few steps a run) says so above its table, whose verdicts mean nothing."""
    out = Path(out_dir)
    claims = pd.concat([read_parquet(p, CLAIMS_SCHEMA) for p in claims_paths], ignore_index=True)
    counts = claims.verdict.value_counts()
    estimate = [("–" if pd.isna(e) else f"{e:.3g}" + ("" if pd.isna(lo) or lo == hi else f" [{lo:.3g}, {hi:.3g}]"))
                for e, lo, hi in zip(claims.estimate, claims.lo, claims.hi)]
    table = pd.DataFrame({"study": [f"[{s}]({s}/README.md)" for s in claims.study], "claim": claims.statement,
                          "source": claims.source, "verdict": claims.verdict, "estimate [interval]": estimate,
                          "test": test_text(claims), "seeds": seeds_text(claims), "why / caveat": claims.note.fillna("")})
    lines = ["# normbench reports", ""] + (
        ["> **Smoke check** (`smoke: true`): every run trained a few steps and was evaluated on the first test "
         "examples. It shows that data, training, claims and reports work end to end; its verdicts and numbers "
         "measure nothing.", ""] if smoke else []) + [
             f"The papers' claims, each checked on this run's data ({CLAIM_RULE}): "
             + ", ".join(f"{counts.get(v, 0)} {v}" for v in ("reproduced", "not reproduced", "inconclusive")) + ".",
             "Each study's report gives what each estimate measures; the estimate is the deciding part (for a claim "
             "checked at several settings, the one nearest to failing).",
             "", table.to_markdown(index=False), "", "## Studies", ""]
    for name in studies:
        f = out / name / "finding.json"
        finding = json.loads(f.read_text())["finding"] if f.exists() else "(not built)"
        lines.append(f"- [{STUDIES.get(name).title}]({name}/README.md) — {finding}")
    lines += ["", "Each study's folder holds its Markdown report, CSV/HTML tables and SVG/PNG figures; "
              "failed runs (diverged or collapsed to chance) are counted, never dropped silently."]
    write_text("\n".join(lines) + "\n", out / "index.md")
    return out / "index.md"


def build_all(results="results", out="reports", studies=None) -> list[Path]:
    """Rebuild every study's claims and report found under ``results`` (no training)."""
    studies = studies or [s for s in STUDIES if (Path(results) / s / "summary.parquet").exists()]
    done, claims = [], []
    for st in studies:
        base = Path(results) / st
        check_claims(st, base / "summary.parquet", base / "metrics.parquet", base / "claims.parquet")
        build_study(st, base / "summary.parquet", base / "metrics.parquet", base / "claims.parquet", Path(out) / st)
        claims.append(base / "claims.parquet")
        done.append(Path(out) / st / "README.md")
    done.append(write_index(out, studies, claims))
    return done


__all__ = ["check_claims", "build_study", "write_index", "build_all", "CLAIMS_SCHEMA"]
