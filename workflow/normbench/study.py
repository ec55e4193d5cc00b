"""What a study is: one scientific question with its own grid, report and claims.

A study module (``studies/<name>.py``) defines ``STUDY = Study(...)``: its
question and paper, the runner its runs use, the tables and figures its report
produces and the function that builds them, and the paper's claims checked
against its data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import pandas as pd

if TYPE_CHECKING:  # annotations only
    from .claims import Claim
    from .report import Report


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    question: str
    source: str  # the paper (or benchmark) whose claims it tests
    build: Callable[[pd.DataFrame, pd.DataFrame], "Report"]  # (summary, metrics) -> its report
    tables: dict[str, str]  # name -> what it compares (a label in the HTML report)
    figures: dict[str, str]
    runner: str = "sgd"
    claims: tuple["Claim", ...] = field(default_factory=tuple)
