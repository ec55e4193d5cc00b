"""Errors users see, each with one clear message (kept free of heavy imports)."""


class ConfigError(ValueError):
    """Bad user input: the message names the key, the value and the choices.
    ``key`` is the setting at fault (e.g. "norm") when the message does not start with it."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class DataError(RuntimeError):
    """Dataset files missing, corrupt or unreachable; the message names the file and what to do."""


class IncompleteRun(RuntimeError):
    """A run folder that should hold results but does not (the message names the path)."""
