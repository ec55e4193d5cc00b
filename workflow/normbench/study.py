"""What a study is: one scientific question with its own grid, report and claims.

A study module (``studies/<name>.py``) defines ``STUDY = Study(...)``: its
question and paper, the runner its runs use, the tables and figures its report
produces and the function that builds them, and the paper's claims checked
against its data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    source: str  # the paper (or benchmark) whose claims it tests
    build: Callable[[pd.DataFrame, pd.DataFrame], object]  # (summary, metrics) -> its normbench.report.Report
    question: str = ""
    tables: dict[str, str] = field(default_factory=dict)  # name -> what it compares (a label in the HTML report)
    figures: dict[str, str] = field(default_factory=dict)
    runner: str = "sgd"
    claims: tuple = ()  # normbench.claims.Claim, each
