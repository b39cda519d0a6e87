"""Shared test set-up."""

import asyncio

import pytest


@pytest.fixture(autouse=True)
def _an_event_loop_is_set():
    # Pulumi's mock runtime uses the thread's current event loop; tests that ran asyncio.run() before leave
    # none (or a closed one) behind. Give each test an open one, so results do not depend on test order.
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
        if loop.is_closed():
            raise RuntimeError("closed")
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    yield
