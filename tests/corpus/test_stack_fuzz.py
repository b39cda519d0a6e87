"""Every hostile change to a real stack file is either accepted or refused clearly — generated, not listed.

Hypothesis mutates the project's own stack files (tests/stack_mutants.py: one change at a random key path, a
hostile value, an unknown or duplicated key, a deleted key, an added list item) and runs what the CLI runs,
in process: `fleet validate --stack` in a project folder holding the mutant, then `fleet plan` on an
accepted one. A refusal exits 2 and names the stack file and the key path (or, for broken YAML, the line),
and shows no traceback, exception class or Python object repr; an accepted mutant also plans (exit 0 or 1),
with no exception. The examples are derandomized (the same in every run) and bounded, so CI is deterministic.
"""

from __future__ import annotations

import contextlib
import re
import shutil

import pytest
from fuzzing import fuzz_settings
from hypothesis import given
from stack_mutants import ROOT, Mutant, dotted, mutants
from typer.testing import CliRunner

from fleet.cli import app

EXIT_CONFIG = 2
LEAKS = re.compile(
    r"Traceback \(most recent call last\)|object at 0x[0-9a-f]+|<[a-z_.]+\.[A-Za-z_]+ object|"
    r"\b[A-Z][A-Za-z]*(Error|Exception)\b"
)
FUZZ = fuzz_settings(150)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "Pulumi.yaml", folder / "Pulumi.yaml")
    return folder


def run(project, mutant: Mutant, *args: str):
    (project / mutant.file_name).write_text(mutant.text, encoding="utf-8")
    with contextlib.chdir(project):
        return CliRunner().invoke(app, [*args, "--stack", mutant.stack], env={"COLUMNS": "200", "NO_COLOR": "1"})


def names_the_place(output: str, mutant: Mutant) -> bool:
    """The refusal points at the change: its key path or one of its sections (a rule over several keys names
    the key to change, in the section changed), or the line of YAML that cannot be read."""
    if re.search(r"not valid YAML at line \d+, column \d+", output):
        return mutant.kind == "duplicate-key" and "is given twice" in output or "nested more than" in output
    sections = [dotted(mutant.path[:end]) for end in range(len(mutant.path), 0, -1)]
    if mutant.path[0] == "ollama-fleet:fleet" and len(mutant.path) > 1:
        sections = sections[:-1]  # the section under the fleet key at least
    return any(section in output for section in sections)


def assert_refused_clearly(result, mutant: Mutant, command: str) -> None:
    output = result.output
    where = f"fleet {command} on {mutant!r}:\n{output[-3000:]}"
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{where}\n{result.exception!r}"
    assert result.exit_code == EXIT_CONFIG, where
    assert mutant.file_name in output, where
    assert not LEAKS.search(output), where
    assert names_the_place(output, mutant), where


@FUZZ
@given(mutant=mutants())
def test_a_mutated_stack_file_is_accepted_or_refused_clearly(project, mutant):
    result = run(project, mutant, "validate")
    if result.exit_code == 0 and result.exception is None:
        planned = run(project, mutant, "plan")
        where = f"fleet plan on accepted {mutant!r}:\n{planned.output[-3000:]}"
        assert planned.exception is None or isinstance(planned.exception, SystemExit), f"{where}\n{planned.exception!r}"
        assert planned.exit_code in (0, 1), where
        assert not LEAKS.search(planned.output), where
        return
    assert_refused_clearly(result, mutant, "validate")
