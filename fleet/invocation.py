"""How to run this project's commands again from the user's shell, for messages that give an exact command.

A user who followed the quickstart runs `.venv/bin/fleet` without activating the virtualenv: telling them to
run `fleet …` or `pip install …` would reach another program, or none.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def _shown(path: str) -> str:
    """`path` relative to the current directory when it lies below it (`.venv/bin/fleet`), else absolute."""
    absolute = os.path.abspath(path)
    try:
        relative = Path(absolute).relative_to(Path.cwd())
    except ValueError:
        return absolute
    return str(relative)


def fleet_command() -> str:
    """`fleet` when the shell finds this very program on PATH, else the path of the virtualenv's `fleet`."""
    candidates = [sys.argv[0]] if sys.argv and Path(sys.argv[0]).name == "fleet" else []
    candidates.append(str(Path(sys.executable).parent / "fleet"))
    on_path = shutil.which("fleet")
    for candidate in candidates:
        if not os.path.isfile(candidate):
            continue
        if on_path and os.path.realpath(on_path) == os.path.realpath(candidate):
            return "fleet"
        return _shown(candidate)
    return f"{python_command()} -m fleet.cli"


def python_command() -> str:
    """The interpreter running this program (the virtualenv's python, not resolved past its symlink)."""
    on_path = shutil.which("python3")
    if on_path and os.path.abspath(on_path) == os.path.abspath(sys.executable):
        return "python3"
    return _shown(sys.executable)
