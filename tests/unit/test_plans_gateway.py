"""The gateway's plan without Pulumi: client ports and URL by TLS mode, where token budgets live, and nginx's
plan for the Docker host (loopback clients, Grafana by container name)."""

from __future__ import annotations

from aws_mocks import stack_settings

from fleet.plans.gateway import (
    BUDGET_PATHS,
    DOCKER_ADDRESS_POOLS,
    DOCKER_DNS,
    ClientUrl,
    client_ports,
    client_url,
    gateway_paths,
    gateway_plan,
    gateway_url,
    token_budgets,
)
from fleet.render import nginx


def test_clients_reach_https_and_the_redirect_or_plain_http_with_tls_off():
    prod = stack_settings("prod")
    assert client_ports(prod) == [prod.gateway.https_port, prod.gateway.http_port]
    assert gateway_url(prod, "llm.example.com") == "https://llm.example.com"
    moved = stack_settings("prod", {"gateway.httpsPort": 8443})
    assert gateway_url(moved, "198.51.100.7") == "https://198.51.100.7:8443"
    off = stack_settings("dev", {"gateway.tls": {"mode": "off"}})
    assert client_ports(off) == [off.gateway.http_port]
    assert gateway_url(off, "127.0.0.1") == f"http://127.0.0.1:{off.gateway.http_port}"
    assert client_url(off) == ClientUrl("http", off.gateway.http_port) and client_url(prod) == ClientUrl("https", 443)
    assert ClientUrl("http", 80).at("10.0.0.1") == "http://10.0.0.1" and ClientUrl("http", 443).at("h") == "http://h:443"


def test_budgets_move_nginx_state_into_the_shared_volume_only_when_enforced():
    settings = stack_settings("dev", {"gateway.clients": [{"name": "alpha", "tokensPerDay": 1000}, {"name": "beta"}]})
    assert token_budgets(settings) == {"alpha": 1000}
    assert token_budgets(stack_settings("dev")) == {}
    assert gateway_paths(True) == BUDGET_PATHS and gateway_paths(False) == nginx.GatewayPaths()
    plan = gateway_plan(settings, nginx.placeholder_upstreams(settings), "localhost", gateway_paths(True))
    assert plan.paths.pid == BUDGET_PATHS.pid and plan.budgets == (("alpha", 1000),)


def test_on_the_docker_host_loopback_clients_come_from_docker_and_grafana_is_found_by_name():
    dev = stack_settings("dev")
    plan = gateway_plan(dev, nginx.placeholder_upstreams(dev), "localhost", grafana_upstream="ollama-monitoring-grafana:3000")
    assert list(plan.admin_cidrs) == [*dev.gateway.admin_cidrs, *DOCKER_ADDRESS_POOLS]
    assert plan.grafana_resolver == DOCKER_DNS and plan.server_name == "localhost"
    prod = stack_settings("prod")
    aws = gateway_plan(prod, nginx.placeholder_upstreams(prod), None, grafana_upstream="10.70.1.5:3000")
    assert list(aws.admin_cidrs) == prod.gateway.admin_cidrs and aws.grafana_resolver is None
    assert aws.server_name == prod.gateway.domain
