"""The ``recs`` command line: the front door for engineers and analysts.

Each command is a thin shell over plain functions in tasks/, storage/ and flows/; a
``RecsError`` becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

from tasks.errors import RecsError

app = typer.Typer(
    help="Last.fm related artists and per-user recommendations, published into SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def one_line_errors(fn: F) -> F:
    """Turn a RecsError into ``error: <message>`` on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecsError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
