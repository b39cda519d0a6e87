"""Two narrow replacements inside the Pulumi SDK for runs of the program under mocks (`fleet preview`, `fleet render`).

Both remove per-resource bookkeeping that costs time and changes nothing a mocked run records; `pulumi up` and
`pulumi preview` never load this module. They are written against one SDK release (PINNED, the version
pyproject.toml and constraints.txt pin): with any other version installed `apply` leaves the SDK as shipped,
which gives the same plan, only slower. tests/unit/test_sdk_overrides.py shows that a program's outputs resolve
the same with and without them, and tests/unit/test_program.py that the whole preview does.

- Source positions: for every resource the SDK walks the whole Python stack (`traceback.extract_stack`, twice) so
  that the engine can point its messages at a source line. The mock monitor ignores them; the preview sends an
  empty trace.
- Output properties: for every property of a new resource (a Docker container has 78) the SDK makes four futures
  and an Output whose task awaits them one by one. The replacement resolves one future to the same
  `_OutputData` (value, known, secret, dependencies), as the SDK itself does for a resource's `urn` and `id`
  (`pulumi.runtime.resource.resource_output`).
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

PINNED = "3.272.0"


def _empty_stack_trace():
    from pulumi.runtime.proto import source_pb2

    return source_pb2.StackTrace()


def transfer_properties(res: Any, props: Any, custom: bool) -> dict[str, Any]:
    """`pulumi.runtime.rpc.transfer_properties` with one future per property: give `res` an unresolved Output per
    property (but `urn`, and `id` of a custom resource) and return the resolvers the registration calls."""
    from pulumi.output import Output, _OutputData

    resolvers: dict[str, Any] = {}
    for name in props:
        if name == "urn" or (name == "id" and custom):
            continue
        data: asyncio.Future = asyncio.Future()

        def resolve(value, is_known, is_secret, deps, failed, data=data) -> None:
            if failed is not None:
                data.set_exception(failed)
                return
            resources = set(deps) if deps else set()
            resources.add(res)
            data.set_result(_OutputData(resources=resources, value=value, is_known=is_known, is_secret=is_secret))

        resolvers[name] = resolve
        res.__dict__[name] = Output._from_data(data)
    return resolvers


def apply(pinned: str = PINNED) -> list[str]:
    """Install the replacements if the installed SDK is `pinned`; return the names of what was replaced."""
    if version("pulumi") != pinned:
        return []
    from pulumi.runtime import resource, rpc

    resource._get_stack_trace = _empty_stack_trace
    rpc.transfer_properties = transfer_properties
    return ["pulumi.runtime.resource._get_stack_trace", "pulumi.runtime.rpc.transfer_properties"]
