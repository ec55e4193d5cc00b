"""Study registry: every module in this package is one study (``normbench.study.Study``),
found here by itself -- adding a study is one new module, its config block and its tests."""

from __future__ import annotations

import importlib
import pkgutil

from ..registry import Registry
from ..study import Study

STUDIES: Registry[Study] = Registry("study")


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        study = importlib.import_module(f"{__name__}.{info.name}").STUDY
        if study.name != info.name:
            raise ValueError(f"studies/{info.name}.py defines a study named {study.name!r}: they must agree")
        STUDIES.register(study.name, study)


_discover()
