"""Every bad stack file of the corpus (tests/corpus/bad) is refused by the real CLI, by `fleet validate` and by
`fleet preview`, with exit status 2 and a message that names the file and the key (the `# expect:` lines of
each file) — never a traceback, never a Python object's repr."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((Path(__file__).parent / "bad").glob("*.yaml"))
EXIT_CONFIG = 2
# What leaks when an exception escapes instead of a message: a traceback or a repr such as
# `<pulumi.output.Output object at 0x7f...>`.
LEAKS = re.compile(r"Traceback \(most recent call last\)|object at 0x[0-9a-f]+|<[a-z_.]+\.[A-Za-z_]+ object")


def expectations(path: Path) -> list[str]:
    head = path.read_bytes().decode("utf-8", errors="replace")
    return re.findall(r"^# expect: (.+)$", head, flags=re.MULTILINE)


def run_cli(folder: Path, command: str, stack: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli", command, "--stack", stack],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=180,
    )


def test_the_corpus_is_large_and_every_file_says_what_it_expects():
    assert len(CORPUS) >= 60
    for path in CORPUS:
        assert expectations(path), f"{path.name} has no `# expect:` line"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_stack_is_refused_clearly_by_validate_and_preview(tmp_path, path):
    stack = path.stem
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copy(path, tmp_path / f"Pulumi.{stack}.yaml")
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(("validate", "preview"), pool.map(lambda c: run_cli(tmp_path, c, stack), ("validate", "preview"))))
    for command, proc in runs.items():
        output = proc.stdout + proc.stderr
        where = f"fleet {command} --stack {stack}:\n{output}"
        assert proc.returncode == EXIT_CONFIG, where
        assert not LEAKS.search(output), where
        assert f"Pulumi.{stack}.yaml" in proc.stderr, where
        for expected in expectations(path):
            assert expected in proc.stderr, f"missing {expected!r} in {where}"
