"""The preview's replacements inside the Pulumi SDK (fleet.preview.sdk_overrides) and its paused garbage collector give what
the SDK as shipped gives. The whole preview, with and without them: tests/unit/test_program.py."""

from __future__ import annotations

import asyncio
import gc
import re
from pathlib import Path

import pytest
from pulumi.output import UNKNOWN, Output
from pulumi.runtime import resource as sdk_resource
from pulumi.runtime import rpc

from fleet.preview import sdk_overrides
from fleet.preview.offline import cyclic_gc_paused

ROOT = Path(__file__).resolve().parents[2]


class _Resource:
    """Stands for a resource: transfer_properties only sets attributes on it and counts it among the dependencies."""

    def __init__(self, name: str) -> None:
        self.name = name


async def _settle(output: Output) -> tuple:
    try:
        data = await output._data
    except Exception as exc:  # noqa: BLE001 (the failure is the result here)
        return ("failed", type(exc).__name__, str(exc))
    return (data.value, data.is_known, data.is_secret, sorted(r.name for r in data.resources))


def _outcomes(transfer) -> dict:
    """Resolve every property of a resource the way a registration does, in each case the SDK's resolvers meet,
    and read back what each Output holds."""
    cases = {
        "known": ("t3.large", True, False, None, None),
        "secret": ("hunter2", True, True, None, None),
        "unknown": (None, False, False, None, None),
        "holds an unknown": ({"ip": UNKNOWN}, True, False, None, None),
        "nested": ({"a": [1, 2, {"b": None}]}, True, False, None, None),
        "with dependencies": ("x", True, False, {_Resource("vpc"), _Resource("subnet")}, None),
        "failed": (None, False, False, None, RuntimeError("the provider refused")),
    }
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        resource = _Resource("instance")
        props = {"urn": None, "id": None, **{name: None for name in cases}}
        resolvers = loop.run_until_complete(_in_loop(transfer, resource, props))
        assert "urn" not in resolvers and "id" not in resolvers  # the registration resolves those itself
        for name, args in cases.items():
            resolvers[name](*args)
        return {name: loop.run_until_complete(_settle(getattr(resource, name))) for name in cases}
    finally:
        loop.close()


async def _in_loop(transfer, resource, props):
    return transfer(resource, props, True)


def test_transfer_properties_resolves_like_the_sdk():
    assert rpc.transfer_properties is not sdk_overrides.transfer_properties  # this process runs the SDK as shipped
    shipped = _outcomes(rpc.transfer_properties)
    replaced = _outcomes(sdk_overrides.transfer_properties)
    assert replaced == shipped
    # The cases do differ from one another (the comparison above is not between two empty results).
    assert shipped["secret"] == ("hunter2", True, True, ["instance"])
    assert shipped["holds an unknown"][1] is False
    assert shipped["with dependencies"][3] == ["instance", "subnet", "vpc"]
    assert shipped["failed"] == ("failed", "RuntimeError", "the provider refused")


def test_the_overrides_are_written_for_the_pinned_sdk():
    pins = {
        path: re.search(r'^\s*"?pulumi==([0-9.]+)', (ROOT / path).read_text(), re.MULTILINE).group(1)
        for path in ("constraints.txt", "pyproject.toml")
    }
    assert set(pins.values()) == {sdk_overrides.PINNED}, pins


def test_another_sdk_version_is_left_as_shipped():
    before = (rpc.transfer_properties, sdk_resource._get_stack_trace)
    assert sdk_overrides.apply(pinned="0.0.1") == []
    assert (rpc.transfer_properties, sdk_resource._get_stack_trace) == before


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_then_restored(enabled):
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        with cyclic_gc_paused():
            assert not gc.isenabled()
            kept = [object() for _ in range(10)]
        assert gc.isenabled() is enabled
        assert gc.get_freeze_count() > 0  # what the block made is out of the collector's view
        del kept
    finally:
        gc.unfreeze()
        (gc.enable if was else gc.disable)()
