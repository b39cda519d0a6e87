"""Fixtures of the policy tests: resources built from the real stack files, and those the real program registers."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest
from policy_builders import ROOT, fleet_resources

from fleet.resources import RegisteredResource


@pytest.fixture(params=["dev", "staging", "prod"])
def stack(request) -> str:
    return request.param


@pytest.fixture
def resources_of():
    """A fresh copy of a stack's resources (tests mutate them)."""
    cache: dict[str, list[RegisteredResource]] = {}

    def build(stack: str) -> list[RegisteredResource]:
        if stack not in cache:
            cache[stack] = fleet_resources(stack)
        return copy.deepcopy(cache[stack])

    return build


_DUMP = """
import pickle, sys
from fleet.stack_file import load_stack
from fleet import preview
from fleet.policy_runner import plain
result = preview.run_program(load_stack(sys.argv[1]))
for r in result.resources:
    r.inputs = plain(r.inputs)
    r.outputs = plain(r.outputs or {})
sys.stdout.buffer.write(pickle.dumps(result.resources))
"""


@pytest.fixture(scope="session")
def program_resources():
    """The resources the real program registers under mocks, per stack (one subprocess each: mocks are global)."""
    cache: dict[str, bytes] = {}

    def run(stack: str) -> list[RegisteredResource]:
        if stack not in cache:
            done = subprocess.run([sys.executable, "-c", _DUMP, stack], cwd=ROOT, capture_output=True, timeout=300)
            if done.returncode != 0:
                raise AssertionError(f"the program failed under mocks for {stack}:\n{done.stderr.decode()[-3000:]}")
            cache[stack] = done.stdout
        return pickle.loads(cache[stack])

    return run
