"""A study's report, written from its aggregated Parquet alone (no training, no
config): Markdown with the claims at the top, CSV and HTML tables, SVG and PNG
figures, a caption for each (computed from the data), and a one-line finding
for the index.  ``write`` puts them under ``reports/<study>/`` atomically and
checks it wrote exactly what the study declares (the Snakemake rules' outputs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import plots as P
from .analysis import INTERVAL
from .claims import CLAIMS_SCHEMA, CLAIM_RULE
from .store import write_parquet, write_text
from .study import Study

FIGURE_FORMATS = ("svg", "png")  # vector for papers, raster for the Markdown and HTML reports


@dataclass
class Report:
    study: Study
    finding: str = ""
    notes: list[str] = field(default_factory=list)
    tables: dict[str, tuple[pd.DataFrame, pd.DataFrame, str]] = field(default_factory=dict)  # csv, shown, caption
    figures: dict[str, tuple[object, str]] = field(default_factory=dict)  # figure, caption
    claims: pd.DataFrame | None = None
    # the runs it read: runs, expected (None: unknown), missing (the grid values without a finished run),
    # environments and mixed (normbench.provenance.summarize)
    runs: dict = field(default_factory=dict)
    incomplete: str = ""  # why the tables and figures are missing (a partial study whose build needs more runs)

    def table(self, name, data: pd.DataFrame, caption: str, shown: pd.DataFrame | None = None):
        self.tables[name] = (data, data if shown is None else shown, caption)

    def figure(self, name, fig, caption: str):
        self.figures[name] = (fig, caption)

    def write(self, out_dir: str | Path) -> None:
        st = self.study
        if not self.incomplete and (set(self.tables) != set(st.tables) or set(self.figures) != set(st.figures)):
            raise RuntimeError(f"{st.name}: report built {sorted(self.tables)} + {sorted(self.figures)}, "
                               f"declared {sorted(st.tables)} + {sorted(st.figures)}")
        out = Path(out_dir)
        claims = self.claims if self.claims is not None else pd.DataFrame(columns=CLAIMS_SCHEMA.names)
        md = [f"# {st.title}", "", f"*{st.question}* — after {st.source}.", ""] + runs_banner(self.runs) + [
            f"**Finding:** {self.finding}", "", "## Claims", "", claims_markdown(claims), ""]
        md += [f"> {n}" for n in self.notes] + ([""] if self.notes else [])
        if self.incomplete:
            md += [f"> The tables and figures need runs that have not finished yet ({self.incomplete}).", ""]
        md += [f"Numbers in the tables are the {INTERVAL}; the claims are decided {CLAIM_RULE}. Failed runs "
               f"(diverged or collapsed to chance) are counted, never "
               f"dropped silently.", ""]
        write_text(_html_table(claims_table(claims), f"{st.title}: the paper's claims, checked on our runs"),
                   out / "claims.html")
        write_text(f"The claims of {st.source}, each checked against this study's runs ({CLAIM_RULE}).\n",
                   out / "captions" / "claims.rst")
        for name, (data, shown, caption) in self.tables.items():
            write_text(data.to_csv(index=False), out / f"{name}.csv")
            write_text(_html_table(shown, caption), out / f"{name}.html")
            write_text(caption + "\n", out / "captions" / f"{name}.rst")
            md += [f"## {caption}", "", shown.to_markdown(index=False), "", f"[CSV]({name}.csv)", ""]
        for name, (fig, caption) in self.figures.items():
            for ext in FIGURE_FORMATS:
                P.save(fig, out / f"{name}.{ext}")
            P.close(fig)
            write_text(caption + "\n", out / "captions" / f"{name}.rst")
            md += [f"![{name}]({name}.png)", "", f"*{caption}* ([SVG]({name}.svg))", ""]
        md += environments_markdown(self.runs)
        write_text("\n".join(md), out / "README.md")
        write_text(json.dumps({"study": st.name, "finding": self.finding, **self.runs}), out / "finding.json")


def runs_banner(runs: dict) -> list[str]:
    """Above a study's finding: how many of its runs it read, when not all, and a warning when they
    come from several (instruction set, device, torch) environments."""
    out = []
    if runs.get("expected") is not None and runs["runs"] < runs["expected"]:
        missing = f" Not finished yet: {runs['missing']}." if runs.get("missing") else ""
        out += [f"> **Partial results: {runs['runs']} of {runs['expected']} runs finished.** The claims, tables and "
                f"figures read those only; a claim whose arms have no finished runs says so.{missing}", ""]
    if runs.get("mixed"):
        out += [f"> **Runs from {len(runs['mixed'])} environments** (instruction set / device / torch): "
                f"{'; '.join(runs['mixed'])}. The same seeds round differently on each, so these claims may differ "
                f"from a run on one machine (see *Where the runs ran*).", ""]
    return out


def environments_markdown(runs: dict) -> list[str]:
    """The closing section: each environment that produced the study's runs, with its run count."""
    envs = runs.get("environments") or []
    if not envs:
        return []
    return ["## Where the runs ran", ""] + [f"- {e['runs']} run{'s' if e['runs'] != 1 else ''}: {e['text']}"
                                            for e in envs] + [""]


def describe(s: pd.DataFrame) -> str:
    """The setting a study's runs were trained in, read from their data (never the config)."""
    if s.empty:
        return "not run"
    row, lrs = s.iloc[0], ", ".join(f"{v:g}" for v in sorted(set(s.lr)))
    batches = ", ".join(str(int(b)) for b in sorted(set(s.batch_size)))
    workers = f" × {int(row.workers)} workers" if int(row.workers) > 1 else ""
    return (f"{', '.join(sorted(set(s.model_type)))} {row.model_options} ({row.init} init) on "
            f"{', '.join(sorted(set(s.dataset)))}, {row.optimizer}, batch {batches}{workers}, lr {lrs}, "
            f"{int(s.steps.max())} steps at most, {s.seed.nunique()} seeds")


def artifacts(study: Study) -> dict[str, list[str]]:
    """Every file a study's report writes, relative to its folder, by kind."""
    tables, figures = list(study.tables), list(study.figures)
    return {
        "md": ["README.md", "finding.json"],
        "tables": [f"{t}.{ext}" for t in tables for ext in ("csv", "html")] + ["claims.html"],
        "figures": [f"{f}.{ext}" for f in figures for ext in FIGURE_FORMATS],
        "captions": [f"captions/{n}.rst" for n in tables + figures + ["claims"]],
    }


def seeds_text(claims: pd.DataFrame) -> pd.Series:
    """Each claim's seeds: '5', or '5 + 10 added' where the adaptive stage gave it more."""
    base = claims.seeds.fillna(0).astype(int) - claims.seeds_added.fillna(0).astype(int)
    return pd.Series([f"{b} + {a} added" if a else f"{b}" for b, a in zip(base, claims.seeds_added.fillna(0).astype(int))],
                     index=claims.index)


def test_text(claims: pd.DataFrame) -> pd.Series:
    """Each claim's test and its interval's level, e.g. 'sign test, 97.5%'."""
    return pd.Series([t if pd.isna(lv) else f"{t}, {100 * lv:g}%" for t, lv in zip(claims.test.fillna("–"), claims.level)],
                     index=claims.index)


def claims_table(claims: pd.DataFrame) -> pd.DataFrame:
    # runs: how many runs of its arm each claim read (from partial results, fewer than planned)
    return pd.DataFrame({"claim": claims.statement, "source": claims.source, "verdict": claims.verdict,
                         "measured": claims.measured, "runs": claims["runs"], "test": test_text(claims),
                         "seeds": seeds_text(claims), "why / caveat": claims.note.fillna("")})


def claims_markdown(claims: pd.DataFrame) -> str:
    if claims.empty:
        return "(this study declares no claims)"
    return claims_table(claims).to_markdown(index=False)


def write_claims(claims: pd.DataFrame, path: str | Path) -> None:
    write_parquet(claims, path, CLAIMS_SCHEMA)


def _html_table(df: pd.DataFrame, caption: str) -> str:
    body = df.to_html(index=False, na_rep="–", border=0, escape=True)
    return (f"<!doctype html><html><head><meta charset='utf-8'><style>table{{border-collapse:collapse;"
            f"font-family:sans-serif;font-size:13px}}td,th{{padding:3px 8px;border-bottom:1px solid #ddd;"
            f"vertical-align:top}}</style></head><body><p>{caption}</p>{body}</body></html>")
