"""From Parquet to claims and reports (no training, no config).

``check_claims`` evaluates a study's claims into ``results/<study>/claims.parquet``;
``build_study`` writes ``reports/<study>/``; ``write_index`` puts every study's
claims in one table at the top of ``reports/index.md``; ``build_all`` does it
all again from ``results/`` alone (copy results back from a cluster, rebuild) --
also from a folder whose runs did not all finish: each study reads the runs that
did (``runstate.read_finished``), its claims are decided from them, and the
reports say how many of the planned runs they read.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from . import provenance, topup
from .claims import CLAIM_RULE, CLAIMS_SCHEMA, INCONCLUSIVE, Claim, Evidence, evaluate
from .report import Report, seeds_text, test_text, write_claims
from .runstate import read_finished, read_plan
from .store import METRICS_SCHEMA, SUMMARY_SCHEMA, read_parquet, read_runs, write_text
from .studies import STUDIES


def _read(summary_path, metrics_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    s = read_parquet(summary_path, SUMMARY_SCHEMA)
    if s.empty:
        raise ValueError(f"{summary_path} holds no runs")
    return s, read_parquet(metrics_path, METRICS_SCHEMA)


def decide_topup(study: str, summaries: list, metrics: list, max_seeds: int, out_path, evaluate: dict | None = None
                 ) -> dict:
    """The adaptive stage's decision from the base runs' files (``normbench.topup``): for the study's claims,
    or -- a `normbench evaluate` / leaderboard config (``evaluate``) -- for the verdicts of its page."""
    if max_seeds <= 0:  # off: no first look to take
        decision = {"study": study, "max_seeds": 0, "claims": {}, "runs": []}
    else:
        s = read_runs(summaries, SUMMARY_SCHEMA).to_pandas()
        m = read_runs(metrics, METRICS_SCHEMA).to_pandas()
        if evaluate:
            from .card import plan_topup

            decision = plan_topup(study, s, m, evaluate, max_seeds)
        else:
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
    s, m = _read(summary_path, metrics_path)
    return report_study(study, s, m, read_parquet(claims_path, CLAIMS_SCHEMA), out_dir)


def report_study(study: str, s: pd.DataFrame, m: pd.DataFrame, claims: pd.DataFrame, out_dir,
                 expected: int | None = None, missing: str = "") -> Report:
    """A study's report from its runs (``expected``: how many it plans, where known).  A partial study
    whose tables cannot be built from the runs that finished still gets its claims and a note."""
    st = STUDIES.get(study)
    try:
        rep = st.build(s, m)
    except Exception as e:
        if expected is None or len(s) >= expected:
            raise
        rep = Report(st, finding=f"partial: {len(s)} of {expected} runs finished", incomplete=f"{type(e).__name__}: {e}")
    rep.claims = claims
    rep.runs = {"runs": len(s), "expected": expected, "missing": missing, **provenance.summarize(s)}
    rep.write(out_dir)
    return rep


def _guarded(claim: Claim, missing: str) -> Claim:
    """The claim, answering *inconclusive* (saying which runs are missing) where the finished runs
    cannot feed its check: partial data must never end the report."""

    def check(s: pd.DataFrame, m: pd.DataFrame) -> Evidence:
        try:
            return claim.check(s, m)
        except Exception as e:
            return Evidence(INCONCLUSIVE, "not measurable on the runs that finished",
                            note=(f"its arms lack finished runs ({missing})" if missing else
                                  "its arms lack finished runs") + f": {type(e).__name__}: {e}")

    def arm(s: pd.DataFrame) -> pd.Series:
        try:
            return claim.arm(s)
        except Exception:  # its arm's columns or values are not there yet: it reads none of the runs
            return pd.Series(False, index=s.index)

    return dataclasses.replace(claim, check=check, arm=arm)


def missing_arms(plan: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The grid values of a study's planned runs that no finished run has, e.g. "norm ln; batch_size 2"
    (the arms its claims cannot read yet)."""
    from .pipeline import GRID_COLUMNS

    planned = pd.DataFrame([json.loads(c) for c in plan.config])
    parts = []
    for col in GRID_COLUMNS:
        have = set(summary[col]) if col in summary else set()
        absent = [v for v in dict.fromkeys(planned[col]) if v not in have]
        if absent:
            parts.append(f"{col} " + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in absent))
    return "; ".join(parts)


def _finding(out: Path, name: str) -> dict | None:
    f = out / name / "finding.json"
    return json.loads(f.read_text()) if f.exists() else None


def write_index(out_dir, studies: list[str], claims_paths: list, smoke: bool = False,
                runs: dict[str, dict] | None = None) -> Path:
    """``claims_paths``: each study's claims.parquet (or its claims table); ``smoke``: a pipeline check (a few
    steps a run) says so above its table, whose verdicts mean nothing; ``runs``: per study what its report
    read (``Report.runs``), else its finding.json says.  A study with no finished run is listed as not run."""
    out = Path(out_dir)
    frames = [c if isinstance(c, pd.DataFrame) else read_parquet(c, CLAIMS_SCHEMA) for c in claims_paths]
    claims = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CLAIMS_SCHEMA.names))
    info = {name: ((runs or {}).get(name) or _finding(out, name) or {}) for name in studies}
    partial = {n: i for n, i in info.items() if i.get("expected") is not None and i.get("runs", 0) < i["expected"]}
    mixed = {n: i["mixed"] for n, i in info.items() if i.get("mixed")}
    counts = claims.verdict.value_counts()
    estimate = [("–" if pd.isna(e) else f"{e:.3g}" + ("" if pd.isna(lo) or lo == hi else f" [{lo:.3g}, {hi:.3g}]"))
                for e, lo, hi in zip(claims.estimate, claims.lo, claims.hi)]
    table = pd.DataFrame({"study": [f"[{s}]({s}/README.md)" + (" (partial)" if s in partial else "")
                                    for s in claims.study],
                          "claim": claims.statement, "source": claims.source, "verdict": claims.verdict,
                          "estimate [interval]": estimate, "runs": claims["runs"], "test": test_text(claims),
                          "seeds": seeds_text(claims), "why / caveat": claims.note.fillna("")})
    lines = ["# normbench reports" + (" — partial results" if partial else ""), ""]
    if partial:
        done = sum(i.get("runs", 0) for i in info.values())
        planned = sum(i.get("expected") or i.get("runs", 0) for i in info.values())
        lines += [f"> **Partial results: {done} of {planned} planned runs finished.** Every claim below is decided "
                  "from the runs that finished (a claim whose arms have none says so); "
                  + ", ".join(f"{n} {i.get('runs', 0)} of {i['expected']}" for n, i in partial.items())
                  + ". Run `normbench run` again to finish them, `normbench status` to see what is left.", ""]
    if smoke:
        lines += ["> **Smoke check** (`smoke: true`): every run trained a few steps and was evaluated on the first "
                  "test examples. It shows that data, training, claims and reports work end to end; its verdicts "
                  "and numbers measure nothing.", ""]
    if mixed:
        lines += ["> **Runs from several environments** (instruction set / device / torch) in "
                  + "; ".join(f"{n} ({', '.join(m)})" for n, m in mixed.items())
                  + ": the same seeds round differently on each, so these studies' claims may differ from a run on "
                  "one machine.", ""]
    lines += [f"The papers' claims, each checked on this run's data ({CLAIM_RULE}): "
              + ", ".join(f"{counts.get(v, 0)} {v}" for v in ("reproduced", "not reproduced", "inconclusive")) + ".",
              "Each study's report gives what each estimate measures; the estimate is the deciding part (for a claim "
              "checked at several settings, the one nearest to failing).",
              "", table.to_markdown(index=False), "", "## Studies", ""]
    for name in studies:
        i, title = info[name], STUDIES.get(name).title
        if i.get("runs") == 0:
            lines.append(f"- {title} (`{name}`) — not run"
                         + (f" (0 of {i['expected']} runs finished)" if i.get("expected") else ""))
            continue
        line = f"- [{title}]({name}/README.md) — {i.get('finding', '(not built)')}"
        if name in partial:
            line += f" *(partial: {i['runs']} of {i['expected']} runs)*"
        if name in mixed:
            line += f" **Runs from {len(mixed[name])} environments.**"
        lines.append(line)
    lines += ["", "Each study's folder holds its Markdown report, CSV/HTML tables and SVG/PNG figures; "
              "failed runs (diverged or collapsed to chance) are counted, never dropped silently.", ""]
    lines += _environments_section(info)
    write_text("\n".join(lines) + "\n", out / "index.md")
    return out / "index.md"


def _environments_section(info: dict[str, dict]) -> list[str]:
    """Every environment that produced runs, with its run count and the studies it ran."""
    envs: dict[str, list] = {}
    for name, i in info.items():
        for e in i.get("environments") or []:
            runs, studies = envs.setdefault(e["text"], [0, []])
            envs[e["text"]] = [runs + e["runs"], studies + [name]]
    if not envs:
        return []
    table = pd.DataFrame([{"runs": r, "studies": ", ".join(s), "environment": t} for t, (r, s) in envs.items()])
    return ["## Where the runs ran", "", table.to_markdown(index=False), ""]


def found_studies(results, plan: pd.DataFrame | None) -> list[str]:
    """The studies of a results folder: its plan's, in order, then any other with results there."""
    planned = list(dict.fromkeys(plan.study)) if plan is not None else []
    base = Path(results)
    return planned + [s for s in STUDIES if s not in planned and ((base / s / "summary.parquet").exists()
                                                                 or (base / s / "runs" / "summary").is_dir())]


def build_all(results="results", out="reports", studies=None) -> list[Path]:
    """Rebuild every study's claims and report found under ``results`` (no training).  A study whose
    planned runs have not all finished is reported from those that have (its claims guarded, written to
    the report only: ``results/<study>/claims.parquet`` stays the finished pipeline's)."""
    plan = read_plan(results)
    studies = studies or found_studies(results, plan)
    done, claims, runs = [], [], {}
    for st in studies:
        STUDIES.get(st)
        r = read_finished(results, st, plan)
        if not r.done:
            runs[st] = {"runs": 0, "expected": r.expected}
            continue
        missing = missing_arms(plan[plan.study == st], r.summary) if r.partial else ""
        checks = [_guarded(c, missing) for c in STUDIES.get(st).claims] if r.partial else STUDIES.get(st).claims
        c = evaluate(st, checks, r.summary, r.metrics, topup.looks(topup.read(Path(results) / st / "topup.json")))
        if r.aggregated:
            write_claims(c, Path(results) / st / "claims.parquet")
        rep = report_study(st, r.summary, r.metrics, c, Path(out) / st, r.expected, missing)
        runs[st] = rep.runs | {"finding": rep.finding}
        claims.append(c)
        done.append(Path(out) / st / "README.md")
    done.append(write_index(out, studies, claims, runs=runs))
    return done


__all__ = ["check_claims", "build_study", "report_study", "write_index", "build_all", "CLAIMS_SCHEMA"]
