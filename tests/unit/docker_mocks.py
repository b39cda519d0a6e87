"""Pulumi mocks for the unit tests of the Docker components, and hosts to place them on.

Pulumi's mocks are process-global, so every test installs a fresh monitor with `use_mocks()` and builds its
resources inside a `@pulumi.runtime.test` function: test files using other mocks can share the session.

The monitor is the project's mock cloud (`fleet.preview.mock_cloud`) plus the raw wire form of each resource's inputs,
where secrets are still marked one by one (the deserialized inputs mark a whole list secret if any element
is), so a test can tell a plain nginx.conf from the secret key file uploaded next to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pulumi_docker as docker
from google.protobuf import json_format
from pulumi_command import local, remote

from components.host import Host
from fleet import contract
from fleet.config import PROJECT, FleetSettings
from fleet.preview.mock_cloud import FleetMocks, RecordingMonitor
from fleet.resources import RegisteredResource
from fleet.stack_file import load_stack

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = "docker:index/container:Container"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
BUILT_IMAGE = "docker:index/image:Image"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
LOCAL_COMMAND = "command:local:Command"
REMOTE_COMMAND = "command:remote:Command"
# Marker of a secret value in Pulumi's wire format (pulumi.runtime.rpc).
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
PRIVATE_ADDRESS = "10.70.1.23"
PUBLIC_ADDRESS = "198.51.100.7"


class WireMonitor(RecordingMonitor):
    """Records every registration (see RecordingMonitor) and the wire form of its inputs."""

    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.wire: dict[str, dict[str, Any]] = {}

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        self.wire[response.urn] = json_format.MessageToDict(request.object)
        return response

    def of_type(self, type_: str) -> list[RegisteredResource]:
        return [r for r in self.registered if r.type == type_]

    def named(self, name: str) -> RegisteredResource:
        found = [r for r in self.registered if r.name == name]
        assert len(found) == 1, f"{len(found)} resources named {name!r}: {[r.name for r in self.registered]}"
        return found[0]

    def containers(self, role: str | None = None) -> list[RegisteredResource]:
        return [c for c in self.of_type(CONTAINER) if role is None or c.label_map.get(contract.LABELS.role) == role]

    def container(self, role: str) -> RegisteredResource:
        found = self.containers(role)
        assert len(found) == 1, f"{len(found)} containers with role {role!r}"
        return found[0]

    def wire_inputs(self, resource: RegisteredResource) -> dict[str, Any]:
        return self.wire[resource.urn]

    def urn_of(self, name: str) -> str:
        return self.named(name).urn

    def id_of(self, resource: RegisteredResource) -> str:
        """The id the mock cloud gave a custom resource."""
        return self.resources[resource.urn].id


def use_mocks(stack: str = "dev") -> WireMonitor:
    """Install a fresh mock cloud for one test and return its monitor."""
    mocks = FleetMocks()
    monitor = WireMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    return monitor


def settings_of(stack: str) -> FleetSettings:
    return load_stack(stack, ROOT).settings


def is_wire_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG


def plain_values(value: Any) -> Iterator[Any]:
    """Every leaf of a wire value that is not inside a secret."""
    if is_wire_secret(value):
        return
    if isinstance(value, dict):
        for v in value.values():
            yield from plain_values(v)
    elif isinstance(value, list):
        for v in value:
            yield from plain_values(v)
    else:
        yield value


def unwrap(value: Any) -> Any:
    """A wire value with every secret marker removed."""
    if is_wire_secret(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


SSH_COMMAND = f"ssh -i /tmp/key -o BatchMode=yes ubuntu@{PRIVATE_ADDRESS}"


def make_host(
    name: str = "host",
    *,
    transport: str = "local",
    gpus: int = 0,
    shared_network: bool | None = None,
    models_path: str = "/var/lib/ollama-fleet/models",
) -> Host:
    """A Host as the host components hand it over: a Docker provider, a readiness resource, addresses.

    `transport`: `local` (the deployer's Docker daemon, a shared network unless told otherwise), `ssh` (an
    AWS host reached by the deployer's ssh through SSM: `Host.ssh_command`) or `connection` (an AWS host with
    pulumi-command's own SSH connection). Call inside a `@pulumi.runtime.test` function.
    """
    assert transport in ("local", "ssh", "connection"), transport
    aws = transport != "local"
    shared = (not aws) if shared_network is None else shared_network
    endpoint = f"ssh://ubuntu@{PRIVATE_ADDRESS}" if aws else "unix:///var/run/docker.sock"
    provider = docker.Provider(f"{name}-docker", host=endpoint)
    ready = local.Command(f"{name}-ready", create="true")
    network = None
    if shared:
        network = docker.Network(f"{name}-net", name=f"{name}-net", opts=pulumi.ResourceOptions(provider=provider))
    connection = None
    if transport == "connection":
        connection = remote.ConnectionArgs(
            host=PRIVATE_ADDRESS, user="ubuntu", private_key=pulumi.Output.secret("-----BEGIN OPENSSH PRIVATE KEY-----")
        )
    return Host(
        name=name,
        docker_provider=provider,
        private_address=pulumi.Output.from_input(PRIVATE_ADDRESS if aws else "127.0.0.1"),
        public_address=pulumi.Output.from_input(PUBLIC_ADDRESS) if aws else pulumi.Output.from_input("127.0.0.1"),
        ready=[ready, *([network] if network is not None else [])],
        gpus=gpus,
        connection=connection,
        models_path=models_path,
        shared_network=network,
        ssh_command=pulumi.Output.from_input(SSH_COMMAND) if transport == "ssh" else None,
    )
