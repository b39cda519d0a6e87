"""Bounded polling for the tests that run real processes and containers: they answer when they answer, never for
ever."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(condition: Callable[[], tuple[bool, Any]], what: str, timeout: float, interval: float = 0.2) -> Any:
    """Poll `condition` (returning `(done, value)`) every `interval` seconds until done; the value, or an error
    naming the last one."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = condition()
        if ok:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last})")


def wait_for(condition: Callable[[], Any], what: str, timeout: float, interval: float = 0.2) -> Any:
    """Poll `condition` every `interval` seconds until it returns a true value, and return that value; an error
    naming `what` after `timeout` seconds."""

    def checked() -> tuple[bool, Any]:
        value = condition()
        return bool(value), value

    return wait_until(checked, what, timeout, interval)
