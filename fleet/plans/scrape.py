"""What Prometheus scrapes: every node of the stack and every gateway host, as one typed structure.

A node's exporters (its meter, node exporter and, on a GPU host, DCGM exporter) all answer at the node's one
address, each on its own port (`fleet.ports`); a gateway host has an nginx exporter, a gateway log exporter and,
where the host is its own (AWS), a node exporter. The program fills `ScrapeTargets` with the addresses its
components publish (Pulumi Outputs); once they are known, `scrape_plan` turns the same structure, with plain
strings, into the scrape config's plan. Nothing is flattened into lists and matched up again by position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from fleet import ports
from fleet.config import FleetSettings, NodeGroup
from fleet.render.prometheus import NodeTarget, PrometheusPlan, PrometheusPlanError, build_prometheus_plan, is_gpu_group

A = TypeVar("A")  # an address: a plain string here, a Pulumi Output in the program until it is known


@dataclass(frozen=True)
class NodeScrape(Generic[A]):
    """One Ollama node: its `node` label, its group, whether a DCGM exporter runs beside it, and its address."""

    name: str  # `<group>-<index>`
    group: str
    gpu: bool
    address: A  # an IP address or DNS name, without a port


@dataclass(frozen=True)
class GatewayScrape(Generic[A]):
    """One gateway host's exporters, each `address:port`."""

    name: str  # `gateway-<index>`: the `node` label of the host's node exporter
    nginx_exporter: A
    log_exporter: A
    node_exporter: A | None = None  # None: the host is shared with the nodes, whose exporters report it


@dataclass(frozen=True)
class ScrapeTargets(Generic[A]):
    nodes: tuple[NodeScrape[A], ...]
    gateways: tuple[GatewayScrape[A], ...]


def node_name(group: NodeGroup, index: int) -> str:
    """A node's name (`<group>-<index>`): its `node` label in Prometheus and in the containers' contract."""
    return f"{group.name}-{index}"


def gateway_name(index: int) -> str:
    """A gateway host's name (`gateway-<index>`): the `node` label of its node exporter."""
    return f"gateway-{index}"


def stack_nodes(settings: FleetSettings) -> list[tuple[NodeGroup, str]]:
    """Every node of the stack with its group, in the order of the node groups and their indexes."""
    return [(group, node_name(group, index)) for group in settings.node_groups for index in range(group.count)]


def scrape_targets(
    settings: FleetSettings, node_addresses: Mapping[str, A], gateways: Sequence[GatewayScrape[A]]
) -> ScrapeTargets[A]:
    """The targets of a stack: every node by name (`node_addresses` must hold exactly the stack's nodes) and
    the gateway hosts' exporters (at least one gateway host, names unique)."""
    nodes = stack_nodes(settings)
    names = [name for _, name in nodes]
    missing = [name for name in names if name not in node_addresses]
    unknown = sorted(set(node_addresses) - set(names))
    if missing or unknown:
        raise PrometheusPlanError(
            f"node addresses: the stack's nodes are {', '.join(names)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; not in the stack {', '.join(unknown)}" if unknown else "")
        )
    gateway_names = [g.name for g in gateways]
    if not gateways or len(set(gateway_names)) != len(gateway_names):
        raise PrometheusPlanError(f"gateways: at least one, with distinct names (given {gateway_names})")
    return ScrapeTargets(
        nodes=tuple(
            NodeScrape(name=name, group=group.name, gpu=is_gpu_group(group), address=node_addresses[name])
            for group, name in nodes
        ),
        gateways=tuple(gateways),
    )


def placeholder_targets(settings: FleetSettings, gateway_hosts: int = 1, gateway_node_exporters: bool = False) -> ScrapeTargets[str]:
    """Documentation addresses (RFC 5737) for targets whose addresses exist only after deployment."""
    nodes = stack_nodes(settings)
    addresses = {name: f"192.0.2.{10 + index}" for index, (_, name) in enumerate(nodes)}
    gateways = []
    for index in range(gateway_hosts):
        address = f"198.51.100.{10 + index}"
        gateways.append(
            GatewayScrape(
                name=gateway_name(index),
                nginx_exporter=f"{address}:{ports.NGINX_EXPORTER}",
                log_exporter=f"{address}:{ports.GATEWAY_LOG_EXPORTER}",
                node_exporter=f"{address}:{ports.NODE_EXPORTER}" if gateway_node_exporters else None,
            )
        )
    return scrape_targets(settings, addresses, gateways)


def _node_targets(targets: ScrapeTargets[str]) -> list[NodeTarget]:
    """The nodes for the scrape plan: each exporter of a node at the node's address, on its own port."""
    return [
        NodeTarget(
            name=node.name,
            group=node.group,
            host=node.address,
            gpu=node.gpu,
            meter_port=ports.METER_METRICS,
            node_exporter_port=ports.NODE_EXPORTER,
            dcgm_port=ports.DCGM_EXPORTER if node.gpu else None,
        )
        for node in targets.nodes
    ]


def scrape_plan(
    settings: FleetSettings,
    targets: ScrapeTargets[str],
    stack: str,
    alertmanagers: Sequence[str] = (),
    self_password_file: str | None = None,
) -> PrometheusPlan:
    """The deployed Prometheus' scrape plan, from the stack and its resolved targets."""
    return build_prometheus_plan(
        settings,
        nodes=_node_targets(targets),
        nginx_exporters=[g.nginx_exporter for g in targets.gateways],
        gateway_log_exporters=[g.log_exporter for g in targets.gateways],
        gateway_node_exporters={g.name: g.node_exporter for g in targets.gateways if g.node_exporter is not None},
        stack=stack,
        alertmanagers=list(alertmanagers),
        self_password_file=self_password_file,
    )
