"""The names the program gives its components and their containers.

A container's Docker name is also its address on the local host's shared network, so what the core plans
(Grafana behind the gateway, the Alertmanager Prometheus sends to) names containers exactly as the program
registers them: the `Fleet` is `FLEET`, each component is named after it, each container after its component.
"""

from __future__ import annotations

import re

# The name of the program's `Fleet` component; every other name starts with it.
FLEET = "ollama"

_CONTAINER_NAME = re.compile(r"[^a-zA-Z0-9_.-]")


def container_name(component: str, role: str) -> str:
    """The Docker name of a component's container; on the shared network it is also the peers' address."""
    return _CONTAINER_NAME.sub("-", f"{component}-{role}")


def monitoring_component(fleet: str = FLEET) -> str:
    """The name of the fleet's `Monitoring` component (Prometheus, Alertmanager and Grafana run on its network)."""
    return f"{fleet}-monitoring"


def gateway_component(index: int, fleet: str = FLEET) -> str:
    """The name of the fleet's `Gateway` component on gateway host `index`."""
    return f"{fleet}-gateway-{index}"


def node_component(group: str, index: int, fleet: str = FLEET) -> str:
    """The name of the fleet's `OllamaNode` component for node `index` of node group `group`."""
    return f"{fleet}-{group}-{index}"
