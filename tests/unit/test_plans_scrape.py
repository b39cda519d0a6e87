"""What Prometheus scrapes, planned without Pulumi: the stack's nodes by name, the gateway hosts' exporters, and
the scrape plan built from them."""

from __future__ import annotations

import pytest
import yaml
from aws_mocks import stack_settings

from fleet import ports
from fleet.plans.scrape import GatewayScrape, placeholder_targets, scrape_plan, scrape_targets, stack_nodes
from fleet.render import prometheus
from fleet.render.prometheus import PrometheusPlanError

GATEWAY = GatewayScrape("gateway-0", f"10.0.9.1:{ports.NGINX_EXPORTER}", f"10.0.9.1:{ports.GATEWAY_LOG_EXPORTER}")


def _settings():
    # Two groups of GPU hosts: chat (two nodes) and batch (one).
    chat = stack_settings("prod").node_groups[0].model_dump(by_alias=True, mode="json")
    return stack_settings("prod", {"nodeGroups": [chat, {**chat, "name": "batch", "count": 1}]})


def _jobs(plan) -> dict[str, list[tuple[str, str | None]]]:
    config = yaml.safe_load(prometheus.render_prometheus(plan))
    return {
        job["job_name"]: [(t, g.get("labels", {}).get("node")) for g in job["static_configs"] for t in g["targets"]]
        for job in config["scrape_configs"]
    }


def test_nodes_are_named_by_group_and_index_and_each_exporter_has_its_port():
    settings = _settings()
    assert [name for _, name in stack_nodes(settings)] == ["chat-0", "chat-1", "batch-0"]
    targets = scrape_targets(settings, {"batch-0": "10.0.3.1", "chat-1": "10.0.2.1", "chat-0": "10.0.1.1"}, [GATEWAY])
    # in the stack's order, whatever the order of the addresses given
    assert [(n.name, n.group, n.gpu, n.address) for n in targets.nodes] == [
        ("chat-0", "chat", True, "10.0.1.1"),
        ("chat-1", "chat", True, "10.0.2.1"),
        ("batch-0", "batch", True, "10.0.3.1"),
    ]
    jobs = _jobs(scrape_plan(settings, targets, "prod"))
    nodes = (("10.0.1.1", "chat-0"), ("10.0.2.1", "chat-1"), ("10.0.3.1", "batch-0"))
    assert jobs[prometheus.JOB_DCGM] == [(f"{a}:{ports.DCGM_EXPORTER}", n) for a, n in nodes]
    assert jobs[prometheus.JOB_NODE] == [(f"{a}:{ports.NODE_EXPORTER}", n) for a, n in nodes]
    assert jobs[prometheus.JOB_METER] == [(f"{a}:{ports.METER_METRICS}", None) for a, _ in nodes]
    assert jobs[prometheus.JOB_NGINX] == [(GATEWAY.nginx_exporter, None)]
    assert jobs[prometheus.JOB_GATEWAY_LOG] == [(GATEWAY.log_exporter, None)]


def test_cpu_hosts_have_no_dcgm_exporter_to_scrape():
    settings = stack_settings("dev")
    targets = scrape_targets(settings, {"cpu-0": "ollama-cpu-0-meter"}, [GATEWAY])
    assert [(n.name, n.gpu) for n in targets.nodes] == [("cpu-0", False)]
    jobs = _jobs(scrape_plan(settings, targets, "dev"))
    assert prometheus.JOB_DCGM not in jobs
    assert jobs[prometheus.JOB_NODE] == [(f"ollama-cpu-0-meter:{ports.NODE_EXPORTER}", "cpu-0")]


def test_every_node_of_the_stack_and_only_those_must_have_an_address():
    settings = _settings()
    with pytest.raises(PrometheusPlanError, match=r"the stack's nodes are chat-0, chat-1, batch-0; missing batch-0$"):
        scrape_targets(settings, {"chat-0": "10.0.1.1", "chat-1": "10.0.2.1"}, [GATEWAY])
    with pytest.raises(PrometheusPlanError, match=r"not in the stack chat-2"):
        scrape_targets(settings, {"chat-0": "a", "chat-1": "b", "batch-0": "c", "chat-2": "d"}, [GATEWAY])
    with pytest.raises(PrometheusPlanError, match="gateways: at least one"):
        scrape_targets(settings, {"chat-0": "a", "chat-1": "b", "batch-0": "c"}, [])
    with pytest.raises(PrometheusPlanError, match="distinct names"):
        scrape_targets(settings, {"chat-0": "a", "chat-1": "b", "batch-0": "c"}, [GATEWAY, GATEWAY])


def test_an_address_with_a_port_is_refused_by_the_scrape_plan():
    settings = stack_settings("prod")
    targets = scrape_targets(settings, {"chat-0": "10.0.1.1:9778", "chat-1": "10.0.2.1"}, [GATEWAY])
    with pytest.raises(PrometheusPlanError, match="must be an address or DNS name without a port"):
        scrape_plan(settings, targets, "prod")


def test_gateway_hosts_of_their_own_are_scraped_as_nodes_of_the_gateway_group():
    settings = stack_settings("prod")
    targets = placeholder_targets(settings, gateway_hosts=2, gateway_node_exporters=True)
    plan = scrape_plan(settings, targets, "prod")
    groups = plan.job(prometheus.JOB_NODE).groups
    gateways = [(g.targets, dict(g.labels)) for g in groups if g.labels["group"] == "gateway"]
    assert gateways == [
        ((f"198.51.100.10:{ports.NODE_EXPORTER}",), {"node": "gateway-0", "group": "gateway"}),
        ((f"198.51.100.11:{ports.NODE_EXPORTER}",), {"node": "gateway-1", "group": "gateway"}),
    ]
    shared = scrape_plan(settings, placeholder_targets(settings), "prod")
    assert not [g for g in shared.job(prometheus.JOB_NODE).groups if g.labels["group"] == "gateway"]
