"""User-facing errors and the one-line error wrapper used by every command-line entry point.

Every problem a user can cause (bad data, bad configuration) raises :class:`RirnError` with a
message that names the file, case or config key and what is wrong. Entry points wrap their main
function in :func:`cli_errors`, which prints ``error: <message>`` on one line to stderr and exits
with status 2 (:class:`CasesFailed`: 1), without a traceback. Bugs (any other exception) still
show their traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class RirnError(Exception):
    """A problem with the user's input or configuration; the message is shown as-is."""

    #: Exit status of a command that ends with this error (:func:`cli_errors`).
    exit_code = 2


class DataError(RirnError):
    """Bad or missing data on disk (names the case or file)."""


class ConfigError(RirnError):
    """Invalid configuration (names the config key)."""


class CasesFailed(RirnError):
    """Some cases of a batch failed and the others were done (the command exits with 1)."""

    exit_code = 1


def cli_errors(fn: F) -> F:
    """Decorate an entry point so that a :class:`RirnError` ends the program with one line.

    Hydra wraps exceptions raised inside a ``@hydra.main`` task and prints a traceback, so this
    decorator must sit *inside* ``@hydra.main`` (directly on the task function).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RirnError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]
