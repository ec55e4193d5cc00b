"""Errors users see (kept free of heavy imports: reports and validation load it)."""


class ConfigError(ValueError):
    """Bad user input: the message names the key, the value and the choices."""
