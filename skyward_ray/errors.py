"""The root of every error this package raises on purpose.

It sits below every layer (it imports only click, which Ray's CLI is built on), so the CLI can print any of them as
one clear line without a traceback, while unexpected exceptions still show theirs.
"""

from click import ClickException


class SkywardError(Exception):
    """An error meant for the user: its message says what was wrong and what is allowed."""


class ConfigError(SkywardError, ClickException, ValueError):
    """Bad input: the message names the field, the value and what is allowed.

    It is also a ``click.ClickException`` because ``ray up`` is a click app that lets our provider's
    ``bootstrap_config`` errors escape: click then prints ``Error: <message>`` and exits 1, without a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)  # ClickException's: keeps .message (what click prints) and args for pickling
