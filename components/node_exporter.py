"""The Prometheus node exporter of a host: CPU, memory, disks and network of an Ollama node or a gateway host,
wired from its plan (fleet.plans.node_exporter)."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

from components import containers
from components.containers import Placement, healthcheck, label_args
from components.images import pinned_image
from fleet.plans.node_exporter import LOOPBACK, NodeExporterPlan


def node_exporter(
    plan: NodeExporterPlan, place: Placement, parent: pulumi.Resource, beside: docker.Container | None = None
) -> docker.Container:
    """The planned node exporter for the host of `place`.

    On a shared Docker network it joins the network namespace of `beside` (the node's exporters then share one
    address); elsewhere it uses host networking on the private address, with the host's filesystems read-only."""
    name = plan.component
    image = pinned_image(f"{name}-node-exporter-image", plan.image, place, parent)
    command: pulumi.Input[list[str]] | None = None
    extra: dict = {}
    if place.shared:
        if beside is None:
            raise ValueError(f"{name}: a node exporter on a shared network needs a container to sit beside")
        # In that container's network namespace. No root filesystem mount: Docker Desktop refuses to share `/`,
        # and a dev host's disks matter little.
        extra = {"network_mode": pulumi.Output.concat("container:", beside.id)}
        address: pulumi.Output[str] = pulumi.Output.from_input(LOOPBACK)
    else:
        # Host networking (the host's interfaces, not the container's), listening on the private address
        # only; the host's filesystems read-only, rslave so that later mounts (the model volume) show.
        address = pulumi.Output.from_input(place.host.private_address)
        command = address.apply(plan.host_flags)
        extra = {
            "network_mode": "host",
            "mounts": [
                docker.ContainerMountArgs(
                    type="bind",
                    source="/",
                    target=plan.rootfs,
                    read_only=True,
                    bind_options=docker.ContainerMountBindOptionsArgs(propagation="rslave"),
                )
            ],
        }
    return docker.Container(
        f"{name}-node-exporter",
        name=plan.name,
        image=image.image_id,
        command=command,
        pid_mode="host",
        **containers.RUNTIME,
        healthcheck=healthcheck(address.apply(plan.probe), start_period="10s"),
        labels=label_args(plan.labels),
        opts=place.resource_options(parent),
        **extra,
    )
