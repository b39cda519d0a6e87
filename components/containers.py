"""What every fleet container shares: labels, restart policy, log rotation, and where its ports are reachable.

Two placements exist. On the local Docker host every container joins the host's shared network: peers reach
each other by container name and nothing is published except the gateway and the operator ports (bound to
`local.bindAddress`). On AWS each component keeps a private bridge network for its own containers, and ports
that other hosts need are published on the host's private address only (the security groups decide who may
connect); the gateway alone listens on every address.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pulumi
import pulumi_docker as docker

from components.host import Host
from fleet.plans.placement import PlacementPlan

RESTART = "unless-stopped"
# json-file with rotation: without it a busy gateway or a chatty Ollama fills the host's disk.
LOG_DRIVER = "json-file"
LOG_OPTS = {"max-size": "50m", "max-file": "5"}
# What every container of the fleet runs with: `docker.Container(..., **containers.RUNTIME)`.
RUNTIME = {"restart": RESTART, "log_driver": LOG_DRIVER, "log_opts": LOG_OPTS}
ALL_ADDRESSES = "0.0.0.0"


def resolve_grouped(groups: Mapping[str, Sequence[pulumi.Input[str]]]) -> pulumi.Output[dict[str, list[str]]]:
    """One Output of `{key: [values]}` from lists of Outputs (the node addresses by group)."""
    keys = list(groups)
    return pulumi.Output.all(*[pulumi.Output.all(*groups[key]) for key in keys]).apply(
        lambda lists: {key: list(values) for key, values in zip(keys, lists)}
    )


def label_args(values: Mapping[str, pulumi.Input[str]]) -> list[docker.ContainerLabelArgs]:
    """A container's labels as planned (`fleet.contract` keys), in their order."""
    return [docker.ContainerLabelArgs(label=key, value=value) for key, value in values.items()]


def volume(name: str, place: Placement, parent: pulumi.Resource) -> docker.Volume:
    """A named Docker volume on the placement's host (`name` is both the resource's and Docker's), labelled with
    the stack's environment."""
    labels = [docker.VolumeLabelArgs(label=k, value=v) for k, v in place.plan.network_labels.items()]
    return docker.Volume(name, name=name, labels=labels, opts=place.resource_options(parent))


def metrics_healthcheck(port: int) -> docker.ContainerHealthcheckArgs:
    """Health check of the project's Python exporters (their image has Python, not curl or wget)."""
    probe = f"import urllib.request as u; u.urlopen('http://127.0.0.1:{port}/metrics', timeout=5)"
    return healthcheck(["CMD", "python", "-c", probe], start_period="10s")


def healthcheck(test: pulumi.Input[Sequence[str]], *, interval: str = "30s", timeout: str = "10s", retries: int = 3,
                start_period: str = "30s") -> docker.ContainerHealthcheckArgs:
    """Docker's health check running `test` (a list, or an Output of one where it holds an address)."""
    return docker.ContainerHealthcheckArgs(
        tests=list(test) if isinstance(test, (list, tuple)) else test,
        interval=interval,
        timeout=timeout,
        retries=retries,
        start_period=start_period,
    )


class Placement:
    """Where one component's containers sit on a host, which ports they publish and how peers address them."""

    def __init__(self, component: str, plan: PlacementPlan, host: Host, parent: pulumi.Resource):
        self.plan = plan
        self.host = host
        self.shared = host.shared_network is not None
        if host.shared_network is not None:
            self.network = host.shared_network
        else:
            self.network = docker.Network(
                f"{component}-net",
                name=f"{component}-net",
                driver="bridge",
                labels=[docker.NetworkLabelArgs(label=k, value=v) for k, v in self.plan.network_labels.items()],
                opts=self.resource_options(parent),
            )

    def resource_options(self, parent: pulumi.Resource, depends_on: Sequence[pulumi.Resource] = ()) -> pulumi.ResourceOptions:
        """Options of every Docker resource of the component: its host's daemon, after the host is ready."""
        return pulumi.ResourceOptions(
            parent=parent,
            provider=self.host.docker_provider,
            depends_on=[*self.host.ready, *depends_on],
        )

    def networks(self, name: str) -> list[docker.ContainerNetworksAdvancedArgs]:
        return [docker.ContainerNetworksAdvancedArgs(name=self.network.name, aliases=[name])]

    def peer_address(self, name: str, port: int, after: pulumi.Resource | None = None) -> pulumi.Output[str]:
        """`address:port` at which containers of other components (and other hosts) reach this service.

        On the shared network the address is the container's name, which Docker's DNS answers only once that
        container runs: with `after` (the container), whoever is given the address is created after it, so a
        peer that resolves names when it starts (nginx's upstreams) finds it."""
        if self.shared:
            address = pulumi.Output.from_input(f"{name}:{port}")
            if after is None:
                return address
            return pulumi.Output.all(after.id, address).apply(lambda values: values[1])
        return pulumi.Output.from_input(self.host.private_address).apply(lambda address: f"{address}:{port}")

    def peer_host(self, name: str) -> pulumi.Output[str]:
        """The address (no port) at which other components and hosts reach this component's containers: the
        container's name on the shared network, else the host's private address."""
        if self.shared:
            return pulumi.Output.from_input(name)
        return pulumi.Output.from_input(self.host.private_address)

    def private_ports(self, *ports: int) -> list[docker.ContainerPortArgs]:
        """Ports other hosts need (metering, exporters): unpublished on the shared network, else on the
        private address only."""
        if self.shared:
            return []
        return [docker.ContainerPortArgs(internal=p, external=p, ip=self.host.private_address) for p in ports]

    @property
    def operator_address(self) -> pulumi.Input[str]:
        """Where operator UIs (Prometheus, Grafana) are published: the local bind address (loopback by
        default), or the host's private address on AWS (reached through SSM port forwarding or an admin CIDR)."""
        if self.plan.target == "local":
            return self.plan.bind_address
        return self.host.private_address

    def operator_ports(self, *ports: int) -> list[docker.ContainerPortArgs]:
        return [docker.ContainerPortArgs(internal=p, external=p, ip=self.operator_address) for p in ports]

    def public_ports(self, *ports: int) -> list[docker.ContainerPortArgs]:
        """The gateway's client ports: the local bind address, or every address of an AWS gateway host."""
        address = self.plan.bind_address if self.plan.target == "local" else ALL_ADDRESSES
        return [docker.ContainerPortArgs(internal=p, external=p, ip=address) for p in ports]

    def operator_url(self, port: int, path: str = "") -> pulumi.Output[str]:
        return pulumi.Output.from_input(self.operator_address).apply(lambda address: f"http://{address}:{port}{path}")
