"""Fixtures of the policy tests: the resources the real program registers under mocks, per stack."""

from __future__ import annotations

import pytest
from policy_builders import program_resources


@pytest.fixture(params=["dev", "staging", "prod"])
def stack(request) -> str:
    return request.param


@pytest.fixture
def resources_of():
    """A fresh copy of what the program registers for a stack, optionally with overrides (tests mutate it)."""
    return program_resources
