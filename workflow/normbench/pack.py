"""A pack: the runs one job trains (shared start-up and data).

Each run still writes its own files; the pack marker (a JSON list of the
runs) is written last.  A pack interrupted half-way resumes where it stopped:
finished runs are skipped, the others continue from their group's checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from .runners import RUNNERS, Job
from .store import write_text


def run_pack(jobs: list[dict], marker: str | Path | None = None, say: Callable[[str], None] | None = None,
             checkpoint_dir: str | Path | None = None) -> list[Job]:
    """Train every job (``{"config": …, "files": {"summary": …, "metrics": …}}``) not already finished."""
    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    all_jobs = [Job.from_dict(j) for j in jobs]
    todo = [j for j in all_jobs if not j.done]
    if len(todo) < len(all_jobs):
        say(f"{len(all_jobs) - len(todo)} of {len(all_jobs)} runs already finished: skipped")
    by_runner: dict[str, list[Job]] = {}
    for j in todo:
        by_runner.setdefault(j.config.runner, []).append(j)
    for runner, rjobs in by_runner.items():
        RUNNERS.get(runner).train(rjobs, say, Path(checkpoint_dir) if checkpoint_dir else None)
    if marker:
        write_text(json.dumps({"runs": [str(j.files["summary"]) for j in all_jobs],
                               "seconds": time.perf_counter() - t0}, indent=1), marker)
    return all_jobs


def pipeline_stats(results: str | Path, wall: float, cores: int, since: float = 0.0,
                   workdir: str | Path = ".") -> dict | None:
    """Useful-compute fraction of a pipeline run: the CPU time its runs' processes spent
    training (``compute_time_s``: eval and probes included, a pack's shared among its runs)
    of the runs finished after ``since`` ÷ (cores × wall).  CPU time, not wall time: a job
    waiting for a core or for I/O is not working, so the fraction cannot exceed 1.  The pack
    markers name their runs as Snakemake saw them: relative paths are relative to the pipeline's
    working directory ``workdir``, never to wherever this process happens to run (a checkout's own
    older results would be found there instead)."""
    import pyarrow.parquet as pq

    useful, runs = 0.0, 0
    for marker in Path(results).glob("*/packs/**/pack.json"):
        if marker.stat().st_mtime < since:
            continue
        for run in json.loads(marker.read_text())["runs"]:
            f = Path(workdir) / run  # an absolute path stays as it is
            if f.exists() and f.stat().st_mtime >= since:  # trained in this pipeline run, not an earlier one
                table = pq.read_table(f, partitioning=None)
                if "compute_time_s" in table.column_names:
                    useful += float(table.column("compute_time_s")[0].as_py())
                    runs += 1
    if not runs:
        return None
    return {"runs": runs, "wall_s": wall, "cores": cores, "useful_s": useful, "fraction": useful / (cores * wall)}
