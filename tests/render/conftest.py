"""Fixtures of the renderer tests: one run per stack file."""

from __future__ import annotations

import pytest
from render_tools import STACKS

from fleet.stack_file import load_stack


@pytest.fixture(params=STACKS)
def stack(request) -> str:
    return request.param


@pytest.fixture
def settings(stack):
    return load_stack(stack).settings
