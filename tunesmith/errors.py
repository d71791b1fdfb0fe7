"""Errors a user can act on. The CLI prints them as one or a few lines, without a traceback."""


class TunesmithError(Exception):
    """Base for errors caused by the user's input, not by a bug."""


class ConfigError(TunesmithError):
    """The recipe or its overrides are invalid: names the key, the value and what is allowed."""
