"""Fixtures of the renderer tests: one run per stack file, and the fake nodes behind the gateway tests."""

from __future__ import annotations

import pytest
from gateway_bed import node
from render_tools import STACKS

from fleet.stack_file import load_stack


@pytest.fixture(params=STACKS)
def stack(request) -> str:
    return request.param


@pytest.fixture
def settings(stack):
    return load_stack(stack).settings


@pytest.fixture
def nodes():
    """Group `cpu`'s two nodes, `a` and `b`, each a fake Ollama serving the dev stack's model."""
    pair = [node("a"), node("b")]
    yield pair
    for fake in pair:
        fake.stop_thread()
