"""What placing containers on a host takes from the stack: the target (the local Docker host or AWS), the address
the local host publishes on, and the labels of the networks a component creates.

components/containers.py (`Placement`) wires it; `LocalHostPlan` is the dev stack's local Docker host: its
daemon, its shared network and the models volume that outlives the stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleet import contract
from fleet.config import FleetSettings, Target


@dataclass(frozen=True)
class PlacementPlan:
    target: Target
    bind_address: str  # where the local host publishes the gateway and operator ports (`local.bindAddress`)
    network_labels: Mapping[str, str]  # the labels of a network or volume: the stack's environment

    @classmethod
    def of(cls, settings: FleetSettings) -> PlacementPlan:
        return cls(settings.target, settings.local.bind_address, contract.environment_labels(settings))


@dataclass(frozen=True)
class LocalHostPlan:
    """The local Docker host of component `name`: one daemon, one shared network, one models volume."""

    name: str
    docker_host: str  # the daemon's address (`local.dockerHost`)
    bind_address: str
    network: str  # the shared network every container joins
    models_volume: str  # the Docker volume of the models, kept when the stack is destroyed
    labels: Mapping[str, str]  # the network's and the volume's labels

    @classmethod
    def of(cls, settings: FleetSettings, name: str) -> LocalHostPlan:
        local = settings.local
        return cls(
            name=name,
            docker_host=local.docker_host,
            bind_address=local.bind_address,
            network=f"{name}-net",
            models_volume=f"{name}-models",
            labels=contract.environment_labels(settings),
        )
