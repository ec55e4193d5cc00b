"""Runners: how a run trains.  One interface, and nothing outside a runner
branches on its name:

* ``check(cfg)`` raises ``ConfigError`` if the run cannot train (called for every
  distinct run structure before any job starts);
* ``train(jobs, say, checkpoint_dir)`` trains the jobs (``Job``: a run's config and
  the files it writes), writes each run's files and returns their results;
* ``resumable(jobs, checkpoint_dir)``: which of a pack's unfinished jobs a checkpoint
  there would resume (``normbench status``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..recorder import FINGERPRINT_KEY, RunResult
from ..registry import Registry
from ..settings import RunConfig
from ..store import read_metadata
from .linear_gd import LinearGD
from .sgd import SGD


@dataclass
class Job:
    config: RunConfig
    files: dict[str, Path] | None = None  # "summary", "metrics" -> where the run's files go (None: not written)

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(RunConfig.from_dict(d["config"]), {k: Path(v) for k, v in d["files"].items()})

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "files": {k: str(v) for k, v in self.files.items()}}

    @property
    def done(self) -> bool:
        """Finished with these settings: its summary exists and records this config's fingerprint.  A
        setting outside the run's path (steps, probes, …) changed since: it trains again, never kept stale."""
        return (bool(self.files) and self.files["summary"].exists()
                and read_metadata(self.files["summary"], FINGERPRINT_KEY) == self.config.fingerprint())

    def finish(self, result: RunResult) -> RunResult:
        if self.files:
            result.write(self.files, self.config.fingerprint())
        return result


class Runner(Protocol):
    def check(self, cfg: RunConfig) -> None: ...

    def train(self, jobs: list[Job], say: Callable[[str], None],
              checkpoint_dir: Path | None = None) -> list[RunResult]: ...

    def resumable(self, jobs: list[Job], checkpoint_dir: Path) -> list[bool]: ...


RUNNERS: Registry[Runner] = Registry("runner")
RUNNERS.register("sgd", SGD())
RUNNERS.register("linear_gd", LinearGD())


def train(cfg: RunConfig, files: dict[str, Path] | None = None, checkpoint_dir: Path | None = None,
          say: Callable[[str], None] | None = None) -> RunResult:
    """Train one run with its runner (files written if given); its result."""
    return RUNNERS.get(cfg.runner).train([Job(cfg, files)], say or (lambda m: None), checkpoint_dir)[0]
