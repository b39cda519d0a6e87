"""How every `fleet` command ends on an error: one line on stderr (`error: …` in red), then its exit code.

The exit codes every command shares live here too; a command adds its own only where it means something else
(`fleet plan`: 1 when a model does not fit).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup
from typer.exceptions import Abort, TyperException

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


def program_failure(error: BaseException) -> str:
    """What the Pulumi program's refusal says, in one line. An error raised inside an Output's apply reaches
    the caller wrapped by the SDK ("While processing resource ... <Class> has risen: ..." with the reprs of the
    inputs on the way): only the innermost message is the program's own."""
    text = re.split(r"\b[A-Za-z_][A-Za-z0-9_]* has risen: ", str(error))[-1]
    text = re.sub(r"<[^<>]* object at 0x[0-9a-f]+>", "<value>", text)
    return " ".join(text.split()) or "no detail"


def output_folder(path: Path, option: str = "--out") -> Path:
    """The folder an `--out` option names, created now: a file in its place, or a folder that cannot be made,
    ends the command before any work with one line saying which and why."""
    if path.exists() and not path.is_dir():
        fail(f"{option} {path}: is a file, not a folder", EXIT_CONFIG)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{option} {path}: cannot create the folder ({exc.strerror or exc})", EXIT_CONFIG)
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"{option} {path}: the folder is not writable", EXIT_CONFIG)
    return path


DEBUG_ENV = "FLEET_DEBUG"


class FleetGroup(TyperGroup):
    """The `fleet` command group: a failure no command foresaw still ends in one line (with the file and the
    system's reason for an OS error), never a traceback; FLEET_DEBUG=1 shows the traceback instead."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, Abort, TyperException, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence, see the class docstring
            if os.environ.get(DEBUG_ENV):
                raise
            if isinstance(exc, OSError):
                where = f"{exc.filename}: " if exc.filename else ""
                fail(f"{where}{exc.strerror or exc}", EXIT_FAILED)
            fail(f"the command failed unexpectedly: {' '.join(str(exc).split()) or 'no detail'}", EXIT_FAILED,
                 hint=f"(set {DEBUG_ENV}=1 to see where)")
