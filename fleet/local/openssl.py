"""The openssl CLI, which makes the keys and certificates of the local test beds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

TIMEOUT_S = 60


def run_openssl(*args: str, error: type[Exception], stdin: str | None = None, cwd: Path | None = None) -> str:
    """openssl with `args` (fed `stdin`, run in `cwd`): what it printed. `error` is raised with the reason when
    openssl is not installed or fails."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise error("openssl is missing: apt-get install openssl")
    proc = subprocess.run([openssl, *args], input=stdin, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise error(f"openssl {args[0]} failed: {proc.stderr.strip()[-400:]}")
    return proc.stdout
