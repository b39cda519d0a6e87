"""The Prometheus node exporter of a host: CPU, memory, disks and network of an Ollama node or a gateway host."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_docker as docker

from components import containers
from components.containers import Placement, container_name, healthcheck, label_args
from components.images import pinned_image
from fleet import contract, ports
from fleet.config import FleetSettings


def node_exporter(
    name: str,
    settings: FleetSettings,
    place: Placement,
    parent: pulumi.Resource,
    node: str,
    beside: docker.Container | None = None,
) -> docker.Container:
    """A node exporter for the host of `place`, labelled `node` (`node_exporter_of` with the stack's image and
    labels)."""
    container_labels = contract.container_labels(settings, "node-exporter", {contract.LABELS.node: node})
    return node_exporter_of(name, settings.images.node_exporter, container_labels, place, parent, beside)


def node_exporter_of(
    name: str,
    image_reference: str,
    container_labels: Mapping[str, str],
    place: Placement,
    parent: pulumi.Resource,
    beside: docker.Container | None = None,
) -> docker.Container:
    """A node exporter for the host of `place`, from the pinned `image_reference`, with `container_labels`.

    On a shared Docker network it joins the network namespace of `beside` (the node's exporters then share one
    address); elsewhere it uses host networking on the private address, with the host's filesystems read-only."""
    exporter_name = container_name(name, "node-exporter")
    image = pinned_image(f"{name}-node-exporter-image", image_reference, place, parent)
    command: list[pulumi.Input[str]] = []
    extra: dict = {}
    if place.shared:
        if beside is None:
            raise ValueError(f"{name}: a node exporter on a shared network needs a container to sit beside")
        # In that container's network namespace. No root filesystem mount: Docker Desktop refuses to share `/`,
        # and a dev host's disks matter little.
        extra = {"network_mode": pulumi.Output.concat("container:", beside.id)}
        probe: pulumi.Input[str] = f"127.0.0.1:{ports.NODE_EXPORTER}"
    else:
        # Host networking (the host's interfaces, not the container's), listening on the private address
        # only; the host's filesystems read-only, rslave so that later mounts (the model volume) show.
        probe = pulumi.Output.from_input(place.host.private_address).apply(lambda address: f"{address}:{ports.NODE_EXPORTER}")
        command = ["--path.rootfs=/host", pulumi.Output.concat("--web.listen-address=", probe)]
        extra = {
            "network_mode": "host",
            "mounts": [
                docker.ContainerMountArgs(
                    type="bind",
                    source="/",
                    target="/host",
                    read_only=True,
                    bind_options=docker.ContainerMountBindOptionsArgs(propagation="rslave"),
                )
            ],
        }
    return docker.Container(
        f"{name}-node-exporter",
        name=exporter_name,
        image=image.image_id,
        command=command or None,
        pid_mode="host",
        **containers.RUNTIME,
        # The image is busybox-based: wget exists.
        healthcheck=healthcheck(
            ["CMD", "wget", "-qO", "/dev/null", pulumi.Output.concat("http://", probe, "/metrics")],
            start_period="10s",
        ),
        labels=label_args(container_labels),
        opts=place.resource_options(parent),
        **extra,
    )
