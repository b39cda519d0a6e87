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


@pytest.fixture
def no_collection_during_parse():
    """For tests that parse source with `ast`: garbage from earlier tests (a failed Pulumi mock run leaves futures
    whose exception nobody read) is collected first, and no collection runs during the test. asyncio reports such
    a future when it is collected, formatting a traceback that parses source too, and CPython 3.11 then fails the
    test's own `ast.parse` with "AST constructor recursion depth mismatch"."""
    import gc

    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
