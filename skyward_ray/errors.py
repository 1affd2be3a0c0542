"""The root of every error this package raises on purpose.

It sits below every layer (it imports only click, which Ray's CLI is built on), so the CLI can print any of them as
one clear line without a traceback, while unexpected exceptions still show theirs.
"""

from click import ClickException


class SkywardError(ClickException):
    """An error meant for the user: its message says what was wrong and what is allowed.

    It is a ``click.ClickException`` because ``ray up``/``ray down`` are click apps that let our provider's errors
    escape (a missing key, an unreachable API, a config error from ``bootstrap_config``): click then prints
    ``Error: <message>`` and exits 1, without a traceback. Elsewhere it behaves as any exception.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)  # ClickException's: keeps .message and args (for pickling)

    def format_message(self) -> str:
        return str(self)  # a subclass's __str__ (e.g. VastError's attempt count) is what click prints too


class ConfigError(SkywardError, ValueError):
    """Bad input: the message names the field, the value and what is allowed."""
