"""How every `fleet` command ends on an error: one line on stderr (`error: …` in red), then its exit code.

The exit codes every command shares live here too; a command adds its own only where it means something else
(`fleet plan`: 1 when a model does not fit).
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

EXIT_FAILED = 1  # the command's work failed (a check, a process, a refusal to write)
EXIT_CONFIG = 2  # bad stack configuration or bad options
EXIT_POLICY = 3  # a mandatory policy or capacity check fails

# Resolves sys.stderr at each print, so a test runner's captured stderr receives it.
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: str, label: str = "error") -> None:
    """Print `label: message` on stderr, the label in red.

    The message is plain text: it quotes stack files and option values, so `[...]` in it prints as written,
    never as rich markup. A long message stays on one line (soft wrap), so logs can be searched for it.
    """
    err.print(f"[bold red]{label}:[/bold red] {escape(message)}")


def fail(message: str, code: int = EXIT_FAILED, label: str = "error", hint: str | None = None) -> NoReturn:
    """Print the error (and the hint, on a line of its own) on stderr and end the command with `code`."""
    print_error(message, label)
    if hint:
        err.print(hint, markup=False)
    raise typer.Exit(code)
