"""A host's node exporter planned without Pulumi: named after its component, the stack's pinned image, the
contract's labels with its `node`, and the flags and probe for the address it answers at."""

from __future__ import annotations

from aws_mocks import stack_settings

from fleet import contract, ports
from fleet.plans.naming import container_name
from fleet.plans.node import NODE_EXPORTER, node_plan
from fleet.plans.node_exporter import NodeExporterPlan, node_exporter_plan


def test_a_gateway_hosts_exporter_is_labelled_with_the_hosts_name():
    settings = stack_settings("prod")
    plan = node_exporter_plan(settings, "ollama-gateway-1", "gateway-1")
    assert plan.name == container_name("ollama-gateway-1", "node-exporter")
    assert plan.image == settings.images.node_exporter and "@sha256:" in plan.image
    assert dict(plan.labels) == contract.container_labels(settings, "node-exporter", {contract.LABELS.node: "gateway-1"})


def test_with_the_hosts_network_it_listens_on_the_given_address_and_reads_the_mounted_root():
    plan = node_exporter_plan(stack_settings("prod"), "ollama-chat-0", "chat-0")
    assert plan.host_flags("10.0.1.7") == ["--path.rootfs=/host", f"--web.listen-address=10.0.1.7:{ports.NODE_EXPORTER}"]
    assert plan.rootfs == "/host"
    assert plan.probe("127.0.0.1") == ["CMD", "wget", "-qO", "/dev/null", f"http://127.0.0.1:{ports.NODE_EXPORTER}/metrics"]


def test_a_nodes_exporter_is_the_one_its_node_plan_labels():
    settings = stack_settings("staging")
    group = settings.node_groups[0]
    node = node_plan(settings, group, 0, f"ollama-{group.name}-0", "/opt/ollama-fleet")
    plan = node.node_exporter()
    assert plan == NodeExporterPlan.of(node.component, settings.images.node_exporter, node.labels[NODE_EXPORTER])
    assert plan.name == node.container(NODE_EXPORTER)
    assert plan == node_exporter_plan(settings, node.component, node.node)
