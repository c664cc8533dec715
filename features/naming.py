"""Which name an error gives a setting: the one its reader set it by.

A Python caller set ``config.features.clv_horizon_days`` or ``as_of``; a command-line user
typed ``--clv-horizon-days`` or ``--as-of``. The library raises the same error for both, so
a message names a setting through `named` / `setting`, which give the flag while
`command_line` is active (`features.cli.run_cli` activates it around every command) and
the Python name otherwise. `counted` puts a count and its noun in the same number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_ON_COMMAND_LINE: ContextVar[bool] = ContextVar("lifecast_command_line", default=False)


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Within the block, messages name settings by their command-line flags."""
    token = _ON_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _ON_COMMAND_LINE.reset(token)


def on_command_line() -> bool:
    """Whether a command of the ``lifecast`` command line is running (`command_line`)."""
    return _ON_COMMAND_LINE.get()


def named(flag: str, python: str) -> str:
    """``flag`` (``--as-of``) on the command line, else ``python`` (``as_of``)."""
    return flag if on_command_line() else python


def setting(flag: str, python: str, value: Any) -> str:
    """A setting with its value as its reader wrote it: ``--clv-horizon-days 365`` on the
    command line, else ``config.features.clv_horizon_days=365``."""
    return f"{flag} {value}" if on_command_line() else f"{python}={value}"


def counted(n: int, noun: str) -> str:
    """``n`` (with thousands separators) and ``noun`` agreeing with it in number: ``1 row``,
    ``2,048 rows``, ``1 day``, ``0 days``."""
    return f"{n:,} {noun if n == 1 else noun + 's'}"
