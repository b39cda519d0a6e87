"""What a host gives the containers placed on it; the seam between host components and container components."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker
from pulumi_command import remote


@dataclass
class Host:
    """A machine that runs containers: how to reach its Docker daemon and when it is ready for them.

    AWS hosts come from `components.gpu_host.GpuHost`; the dev stack's local Docker host from
    `components.local_host.LocalHost`. Container components only read this.
    """

    name: str  # e.g. "chat-0", "gateway-0", "local"
    docker_provider: docker.Provider
    # Address that other hosts (the gateway, Prometheus) use to reach services published on this host.
    private_address: pulumi.Output[str]
    # Address that clients use (the gateway's public IP); None when the host is private.
    public_address: pulumi.Output[str] | None
    # Resources that must exist before any container is deployed (readiness command, volume mount).
    ready: list[pulumi.Resource] = field(default_factory=list)
    gpus: int = 0
    # SSH connection (through SSM) for remote commands; None on the local host (use pulumi_command.local).
    connection: remote.ConnectionArgs | None = None
    zone: str | None = None
    # Host path of the model store (the mounted retained EBS volume on AWS), or the name of a Docker volume
    # (no leading '/') as on the local host.
    models_path: str = "/var/lib/ollama-fleet/models"
    # Host folder where rendered configs are written before being mounted into containers.
    config_path: str = "/etc/ollama-fleet"
    # Single-host deployments (the local Docker host): one user-defined network joining every fleet container,
    # so containers reach each other by container name and publish only the gateway and operator ports.
    # None on AWS: each component keeps its own network and publishes private ports on `private_address`.
    shared_network: docker.Network | None = None
    # Shell prefix (`ssh … user@host`) that runs a command on the host from the deployer, for
    # pulumi_command.local steps: on AWS it goes through SSM Session Manager, which `connection`
    # (pulumi-command's own SSH client) cannot use. None on the local host.
    ssh_command: pulumi.Output[str] | None = None
