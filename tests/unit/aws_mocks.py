"""Pulumi mocks for the AWS host components, and a helper that runs a piece of program under them.

Builds on the project's mock cloud (`fleet.preview.mock_cloud`): the same deterministic resource outputs, plus answers
for every invoke the network, host, DNS and TLS components make (camelCase, every field they read), a record
of the invokes, and outputs for the ACME provider's resources. Mocks are process-global, so `deploy` installs
fresh mocks for each run: test files using it can share one pytest session with other mock-based tests.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any, Callable

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

from fleet.config import PROJECT, FleetSettings
from fleet.preview.mock_cloud import FleetMocks, RecordingMonitor, fake_invoke
from fleet.resources import RegisteredResource
from fleet.stack_file import load_stack, parse_settings

GPU_AMI = "ami-0gpu0000000000001"
UBUNTU_AMI = "ami-0ubuntu000000002"
ZONE_ID = "Z0EXAMPLE12345"


class AwsMocks(FleetMocks):
    """Mock cloud answering the invokes of components/{network,gpu_host,dns,tls}.py.

    `subnets` maps existing subnet ids to (zone, vpc id) for `aws.ec2.get_subnet`; `zones` maps hosted zone
    names to ids for `aws.route53.get_zone` (by name or by id).
    """

    def __init__(self, subnets: dict[str, tuple[str, str]] | None = None, zones: dict[str, str] | None = None):
        super().__init__()
        self.subnets = subnets or {}
        self.zones = zones if zones is not None else {"example.com": ZONE_ID}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, args: pulumi_mocks.MockCallArgs):
        token, inputs = args.token, dict(args.args)
        self.calls.append((token, inputs))
        if token == "aws:ec2/getAmi:getAmi":
            gpu = "amazon" in (inputs.get("owners") or [])
            image = GPU_AMI if gpu else UBUNTU_AMI
            name = next((f["values"][0] for f in inputs.get("filters") or [] if f.get("name") == "name"), "")
            return {"id": image, "imageId": image, "name": name.replace("*", "20260101"), "architecture": "x86_64"}
        if token == "aws:route53/getZone:getZone":
            if inputs.get("zoneId"):
                names = [n for n, z in self.zones.items() if z == inputs["zoneId"]]
                if not names:
                    raise Exception(f"no matching Route 53 Hosted Zone found ({inputs['zoneId']})")
                zone_name, zone_id = names[0], inputs["zoneId"]
            else:
                zone_name = inputs.get("name", "").rstrip(".")
                if zone_name not in self.zones:
                    raise Exception(f"no matching Route 53 Hosted Zone found ({zone_name})")
                zone_id = self.zones[zone_name]
            return {"id": zone_id, "zoneId": zone_id, "name": zone_name, "privateZone": False}
        if token == "aws:ec2/getSubnet:getSubnet":
            subnet_id = inputs["id"]
            if subnet_id not in self.subnets:
                raise Exception(f"no matching EC2 Subnet found ({subnet_id})")
            zone, vpc_id = self.subnets[subnet_id]
            return {"id": subnet_id, "availabilityZone": zone, "vpcId": vpc_id, "mapPublicIpOnLaunch": False}
        return fake_invoke(token, inputs)


@dataclass
class Deployment:
    """What a mocked run registered, with the values (and their secretness) the test asked to resolve."""

    resources: list[RegisteredResource]
    calls: list[tuple[str, dict[str, Any]]]
    values: dict[str, Any] = field(default_factory=dict)
    secret: dict[str, bool] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[RegisteredResource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name_suffix: str = "") -> RegisteredResource:
        found = [r for r in self.of_type(type_) if r.name.endswith(name_suffix)]
        assert len(found) == 1, f"expected one {type_} named *{name_suffix}, found {[r.name for r in found]}"
        return found[0]

    def by_urn(self, urn: str) -> RegisteredResource:
        return next(r for r in self.resources if r.urn == urn)

    def invoked(self, token: str) -> list[dict[str, Any]]:
        return [inputs for t, inputs in self.calls if t == token]


def plain(value: Any) -> Any:
    """Registered inputs without the secret wrappers (to read a value); see `is_secret_input` for the flag."""
    if is_rpc_secret(value):
        return plain(unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def is_secret_input(value: Any) -> bool:
    return is_rpc_secret(value)


def deploy(
    build: Callable[[], dict[str, Any] | None],
    *,
    stack: str = "test",
    mocks: AwsMocks | None = None,
) -> Deployment:
    """Run `build` as a Pulumi program under fresh mocks. `build` may return {name: Output} to resolve."""
    mocks = mocks or AwsMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    values: dict[str, Any] = {}
    secret: dict[str, bool] = {}

    def program():
        wanted = build() or {}

        async def resolve() -> None:
            for key, output in wanted.items():
                output = pulumi.Output.from_input(output)
                values[key] = await output.future()
                secret[key] = await output.is_secret()

        return resolve()

    try:
        pulumi_mocks.test(program)()
    finally:
        # A run that fails leaves futures whose exception nobody retrieved; asyncio reports each when it is
        # collected, formatting its traceback, which parses source with `ast` on Python 3.11. Collected here, never
        # in the middle of a later test's own `ast.parse` (which then fails with "recursion depth mismatch").
        gc.collect()
    return Deployment(resources=list(monitor.registered), calls=list(mocks.calls), values=values, secret=secret)


def stack_settings(stack: str, changes: dict[str, Any] | None = None) -> FleetSettings:
    """A real stack's settings, with `changes` applied by dotted camelCase path ("gateway.tls.mode": "off")
    and validated again, as the stack file would be."""
    data = load_stack(stack).settings.model_dump(by_alias=True, mode="json")
    for path, value in (changes or {}).items():
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return parse_settings(data, f"Pulumi.{stack}.yaml")
