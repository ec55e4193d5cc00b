"""A pack: several runs trained in one process (shared start-up and data).

Each run still writes its own Parquet files and keeps its own checkpoint, so a
pack interrupted half-way resumes where it stopped: finished runs are skipped,
the run in progress continues from its checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from .config import RunConfig
from .store import write_text
from .train import train


def run_pack(jobs: list[dict], marker: str | Path | None = None,
             say: Callable[[str], None] | None = None) -> list[dict]:
    """Train every job (``{"config", "out", "checkpoint"}``) not already finished;
    write the pack marker (a JSON list of the runs and their outcome) last."""
    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    t0, done = time.perf_counter(), []
    for i, job in enumerate(jobs, 1):
        cfg = RunConfig.from_dict(job["config"])
        out = Path(job["out"])
        tag = f"[{i}/{len(jobs)}] {cfg.norm} lr={cfg.lr} bs={cfg.batch_size} seed={cfg.seed}"
        if (out / "summary.parquet").exists():
            say(f"{tag}: already finished, skipped")
        else:
            res = train(cfg, out, job.get("checkpoint"), progress=lambda m, tag=tag: say(f"{tag} {m}"))
            say(f"{tag}: test acc {res.summary['final_test_acc']:.4f}"
                + (" (diverged)" if res.diverged else "") + f", {res.summary['wall_time_s']:.1f}s")
        done.append({"run": str(out)})
    if marker:
        write_text(json.dumps({"runs": done, "seconds": time.perf_counter() - t0}, indent=1), marker)
    return done
