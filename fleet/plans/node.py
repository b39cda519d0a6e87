"""The plan of one Ollama node: its containers' names, images and labels, what runs in them (`NodeRuntime`), where
GGUF files are staged on a remote host, and the shell steps that pull, name and warm its models.

components/ollama_node.py wires exactly this plan (`OllamaNodeArgs(plan, host)`); the host decides only which
kind of resource runs a step (its own daemon, SSH, SSM) and whether a GPU exporter runs beside it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from fleet import contract
from fleet.config import FleetSettings, NodeGroup
from fleet.node_runtime import NodeRuntime, pull_script, warm_script
from fleet.plans.naming import container_name
from fleet.plans.node_exporter import NodeExporterPlan
from fleet.plans.placement import PlacementPlan

# The roles of a node's containers (fleet.contract.ROLES).
OLLAMA, METER, NODE_EXPORTER, DCGM_EXPORTER = "ollama", "meter", "node-exporter", "dcgm-exporter"


@dataclass(frozen=True)
class StagedModel:
    """A GGUF file on the deployer, copied to a remote host before the pull step imports it from there."""

    resource: str  # the name of the copy step
    source: str  # the file on the deployer (`models[].gguf`)
    path: str  # where it lands on the host

    @property
    def receive(self) -> str:
        """The shell command that writes the file from its standard input on the host (through `ssh`)."""
        parent = str(PurePosixPath(self.path).parent)
        return shlex.quote(f"mkdir -p {shlex.quote(parent)} && cat > {shlex.quote(self.path)}")


@dataclass(frozen=True)
class NodeImages:
    ollama: str
    node_exporter: str
    dcgm_exporter: str
    python: str  # the base of the metering exporter's image, built on the host


@dataclass(frozen=True)
class NodePlan:
    """Node `node` of group `group`, wired as component `component`."""

    component: str
    node: str
    group: str
    images: NodeImages
    runtime: NodeRuntime  # its meter proxies `container(OLLAMA)` on the node's network
    labels: Mapping[str, Mapping[str, str]]  # each container's labels, by role
    models: str  # the group's models as the contract writes them: the model steps re-run when it changes
    staging: tuple[StagedModel, ...]  # GGUF files to copy first when the host is remote
    pull: str  # the pull step when the GGUF files are on the machine running it (the local host)
    pull_staged: str  # the pull step once `staging` has copied them to a remote host
    warm: str | None  # the warm-up step; None when no model stays loaded
    docker_host: str  # the local host's daemon, which the deployer's docker CLI talks to
    placement: PlacementPlan

    def container(self, role: str) -> str:
        """The Docker name of the node's `role` container; on the shared network also its address."""
        if role not in self.labels:
            raise KeyError(f"a node has no {role!r} container; roles: {', '.join(self.labels)}")
        return container_name(self.component, role)

    def node_exporter(self) -> NodeExporterPlan:
        """The node's node exporter (it sits beside the meter on a shared network)."""
        return NodeExporterPlan.of(self.component, self.images.node_exporter, self.labels[NODE_EXPORTER])

    def pull_script(self, remote: bool) -> str:
        return self.pull_staged if remote else self.pull


def node_plan(settings: FleetSettings, group: NodeGroup, index: int, component: str, config_path: str) -> NodePlan:
    """The plan of node `index` of `group` (one of the stack's groups), named `component`, on a host whose
    rendered files live under `config_path` (GGUF files are staged in its `imports` folder)."""
    node_contract = contract.NodeContract.of(settings, group, index)
    node = node_contract.node
    ollama = container_name(component, OLLAMA)
    runtime = NodeRuntime.of(group, node, [client.name for client in settings.gateway.clients], ollama)
    labels = {
        OLLAMA: contract.container_labels(settings, OLLAMA, node_contract.labels()),
        METER: contract.container_labels(settings, METER, {contract.LABELS.node: node, contract.LABELS.node_group: group.name}),
        NODE_EXPORTER: contract.container_labels(settings, NODE_EXPORTER, {contract.LABELS.node: node}),
        DCGM_EXPORTER: contract.container_labels(settings, DCGM_EXPORTER, {contract.LABELS.node: node}),
    }
    staging: list[StagedModel] = []
    staged: dict[str, str] = {}  # served name -> its file on the host
    for model in group.models:
        if model.gguf is None:
            continue
        step = StagedModel(
            resource=f"{component}-stage-{model.name}-{model.tag}".replace(".", "-").replace(":", "-"),
            source=model.gguf,
            path=str(PurePosixPath(config_path) / "imports" / PurePosixPath(model.gguf).name),
        )
        staging.append(step)
        staged[model.ref] = step.path
    images = settings.images
    return NodePlan(
        component=component,
        node=node,
        group=group.name,
        images=NodeImages(images.ollama, images.node_exporter, images.dcgm_exporter, images.python),
        runtime=runtime,
        labels=labels,
        models=contract.models_value(group),
        staging=tuple(staging),
        pull=pull_script(ollama, group),
        pull_staged=pull_script(ollama, group, staged),
        warm=warm_script(ollama, group),
        docker_host=settings.local.docker_host,
        placement=PlacementPlan.of(settings),
    )

