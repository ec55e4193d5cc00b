"""One generic registry for every named concept (norms, models, datasets,
runners, studies): lookup with an error that lists the choices, options
merged over defaults with unknown names refused, and entries from the user's
own code named ``"package.module:Attribute"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def _import_file(file: str):
    """A module from a .py file (relative to the working directory), imported once."""
    path = Path(file).resolve()
    name = f"normbench_user_{path.stem}_{abs(hash(str(path))):x}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or not path.exists():
            raise ImportError(f"no file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_object(path: str, what: str) -> Any:
    """``"package.module:Name"`` or ``"path/to/file.py:Name"`` -> that object (the user's
    own class or function)."""
    module, _, attr = path.rpartition(":")
    if not module or not attr:
        raise ConfigError(f"{what} {path!r}: a user-defined entry is written 'package.module:Name' "
                          f"or 'path/to/file.py:Name'")
    try:
        obj = _import_file(module) if module.endswith(".py") else importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{what} {path!r}: cannot import {module!r} ({e}); is it on PYTHONPATH?") from None
    except Exception as e:  # the user's module itself fails: say so, without our traceback
        raise ConfigError(f"{what} {path!r}: importing {module!r} failed: {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {path!r}: module {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def keyword_defaults(fn: Callable, skip: int) -> dict[str, Any]:
    """The keyword parameters of ``fn`` after its first ``skip`` ones, with their
    defaults (``None`` where it has none): the options a user entry accepts."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


class Registry(Generic[T]):
    """Named entries of one kind.  ``adapt`` turns a user's object (loaded from
    ``"module:Name"``) into an entry; without it user entries are refused."""

    def __init__(self, what: str, adapt: Callable[[Any, str], T] | None = None, key: str | None = None):
        self.what, self.key = what, key  # key: the config setting that names an entry
        self._entries: dict[str, T] = {}
        self._adapt = adapt
        self._loaded: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        if self._adapt is not None and isinstance(name, str) and ":" in name:
            if name not in self._loaded:
                self._loaded[name] = self._adapt(load_object(name, self.what), name)
            return self._loaded[name]
        user = " (or 'package.module:Name' for your own)" if self._adapt else ""
        raise ConfigError(f"{self.what} {name!r} is unknown; valid: {', '.join(sorted(self._entries))}{user}",
                          key=self.key)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()


def resolve_options(what: str, name: str, defaults: dict[str, Any], options: dict | None) -> dict[str, Any]:
    """Defaults merged with ``options``; an unknown option name is an error that lists the allowed ones."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(f"{what} {name!r}: unknown option(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(defaults)) or 'none'}")
    return {**defaults, **options}
