"""What a study is: one scientific question with its own grid, report and claims.

A study module (``studies/<name>.py``) defines ``STUDY = Study(...)``: its
question and paper, the runner its runs use, the tables and figures its report
produces and the function that builds them, and the paper's claims checked
against its data; and, if it contributes an axis to the report card of
``normbench evaluate``, its arm and measures (``normbench.scoring.CardArm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from .scoring import CardArm  # noqa: F401  (the type of ``card``)


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
    card: "CardArm | None" = None  # its arm of `normbench evaluate`'s report card, and the measures it reads
