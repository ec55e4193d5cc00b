"""A pack: several runs trained in one process (shared start-up and data).

Runs of identical structure that differ only in lr and seed are trained as one
vectorized model (``vectorized.py``); the others one after another.  Each run
still writes its own Parquet files; a solo run keeps its own checkpoint.  A pack
interrupted half-way resumes where it stopped: finished runs are skipped, a
solo run in progress continues from its checkpoint, a vectorized group restarts
(training is deterministic, so its results are the same).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from .config import RunConfig
from .store import write_text
from .train import get_data, resolve_device, train
from .vectorized import VectorTrainer, structure_key, vectorizable


def plan(cfgs: list[RunConfig], vectorize: bool = True) -> list[list[int]]:
    """Groups of run indices: each group is trained together (vectorized) or alone."""
    groups: dict[tuple, list[int]] = {}
    solo = []
    for i, cfg in enumerate(cfgs):
        if vectorize and vectorizable(cfg):
            groups.setdefault(structure_key(cfg), []).append(i)
        else:
            solo.append([i])
    return list(groups.values()) + solo


def run_pack(jobs: list[dict], marker: str | Path | None = None, say: Callable[[str], None] | None = None,
             vectorize: bool = True) -> list[dict]:
    """Train every job (``{"config", "out", "checkpoint"}``) not already finished;
    write the pack marker (a JSON list of the runs) last."""
    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    todo = [j for j in jobs if not (Path(j["out"]) / "summary.parquet").exists()]
    if len(todo) < len(jobs):
        say(f"{len(jobs) - len(todo)} of {len(jobs)} runs already finished: skipped")
    cfgs = [RunConfig.from_dict(j["config"]) for j in todo]
    for group in plan(cfgs, vectorize):
        gcfgs, gjobs = [cfgs[i] for i in group], [todo[i] for i in group]
        c0 = gcfgs[0]
        tag = f"{c0.norm} bs={c0.batch_size} " + (f"[{len(group)} runs, vectorized]" if len(group) > 1 else
                                                  f"lr={c0.lr} seed={c0.seed}")
        if len(group) == 1:
            res = [train(c0, gjobs[0]["out"], gjobs[0].get("checkpoint"),
                         progress=lambda m, tag=tag: say(f"{tag} {m}"))]
        else:
            if c0.threads:
                import torch

                torch.set_num_threads(c0.threads)
            data = get_data(c0, resolve_device(c0.device))
            res = VectorTrainer(gcfgs, data, progress=lambda m, tag=tag: say(f"{tag} {m}")).run()
            for r, job in zip(res, gjobs):
                r.write(job["out"])
        for cfg, r in zip(gcfgs, res):
            say(f"{cfg.norm} lr={cfg.lr} bs={cfg.batch_size} seed={cfg.seed}: test acc "
                f"{r.summary['final_test_acc']:.4f}" + (" (diverged)" if r.diverged else ""))
    if marker:
        write_text(json.dumps({"runs": [j["out"] for j in jobs], "seconds": time.perf_counter() - t0},
                              indent=1), marker)
    return jobs
