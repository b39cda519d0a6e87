"""The Prometheus node exporter of a host (an Ollama node's or a gateway host's) as data: its container's name,
pinned image and labels, and the flags, mount and probe it runs with. components/node_exporter.py wires it.

Beside another container (the local host's shared network) it shares that container's network namespace and
answers on loopback; with the host's network to itself (AWS) it listens on the host's private address only and
reads the host's filesystems, mounted read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleet import contract, ports
from fleet.config import FleetSettings
from fleet.plans.naming import container_name

ROLE = "node-exporter"
ROOTFS = "/host"  # where the host's root filesystem is mounted
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class NodeExporterPlan:
    component: str  # the component it belongs to: its resources are named after it
    name: str  # the container's Docker name
    image: str  # pinned `repository:tag@sha256:` reference
    labels: Mapping[str, str]  # the contract's labels, `node` among them
    port: int = ports.NODE_EXPORTER
    rootfs: str = ROOTFS

    @classmethod
    def of(cls, component: str, image: str, labels: Mapping[str, str]) -> NodeExporterPlan:
        """The exporter of `component`, from its pinned image and the labels its component's plan gives it."""
        return cls(component=component, name=container_name(component, ROLE), image=image, labels=labels)

    def listen(self, address: str) -> str:
        """`address:port`, where it answers."""
        return f"{address}:{self.port}"

    def host_flags(self, address: str) -> list[str]:
        """Its flags with the host's network to itself: the host's filesystems at `rootfs`, listening on
        `address` (the host's private address) only."""
        return [f"--path.rootfs={self.rootfs}", f"--web.listen-address={self.listen(address)}"]

    def probe(self, address: str) -> list[str]:
        """Its health check, asking for the metrics at `address` (the image is busybox-based: wget exists)."""
        return ["CMD", "wget", "-qO", "/dev/null", f"http://{self.listen(address)}/metrics"]


def node_exporter_plan(settings: FleetSettings, component: str, node: str) -> NodeExporterPlan:
    """The node exporter of `component`, whose host Prometheus labels `node` (`<group>-<i>` or `gateway-<i>`)."""
    labels = contract.container_labels(settings, ROLE, {contract.LABELS.node: node})
    return NodeExporterPlan.of(component, settings.images.node_exporter, labels)
