"""The root of every error this package raises on purpose.

It sits below every layer (it imports nothing), so the CLI can print any of them as one clear line without a
traceback, while unexpected exceptions still show theirs.
"""


class SkywardError(Exception):
    """An error meant for the user: its message says what was wrong and what is allowed."""


class ConfigError(SkywardError, ValueError):
    """Bad input: the message names the field, the value and what is allowed."""
