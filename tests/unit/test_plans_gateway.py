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


# ---- a gateway host's containers ---------------------------------------------------------------------------


def test_a_gateway_host_plan_names_its_containers_after_the_component_and_labels_them_by_role():
    from fleet import contract, ports
    from fleet.exporters import gateway_log
    from fleet.plans.gateway import BUDGET_CONTROLLER, GATEWAY, LOG_EXPORTER, NGINX_EXPORTER, gateway_host_plan

    prod = stack_settings("prod")
    plan = gateway_host_plan(prod, "ollama-gateway-1", "gateway-1")
    assert {role: plan.container(role) for role in (GATEWAY, NGINX_EXPORTER, LOG_EXPORTER, BUDGET_CONTROLLER)} == {
        GATEWAY: "ollama-gateway-1-gateway",
        NGINX_EXPORTER: "ollama-gateway-1-nginx-exporter",
        LOG_EXPORTER: "ollama-gateway-1-gateway-log-exporter",
        BUDGET_CONTROLLER: "ollama-gateway-1-budget",
    }
    assert {role: labels[contract.LABELS.role] for role, labels in plan.labels.items()} == {
        role: role for role in (GATEWAY, NGINX_EXPORTER, LOG_EXPORTER, BUDGET_CONTROLLER)
    }
    # the policy pack reads the gateway's contract from nginx's labels
    assert plan.labels[GATEWAY] == contract.container_labels(prod, GATEWAY, contract.GatewayContract.of(prod).labels())
    assert plan.images.nginx == prod.images.nginx and plan.images.python == prod.images.python
    assert plan.nginx_exporter_command == (
        f"--nginx.scrape-uri=http://ollama-gateway-1-gateway:{ports.NGINX_STATUS}/stub_status",
        f"--web.listen-address=:{ports.NGINX_EXPORTER}",
    )
    args = gateway_log.build_parser().parse_args(list(plan.log_exporter_command))
    assert args.client == ["search", "support-bot", "ci"] and args.gateway == "ollama-gateway-1"
    assert plan.client_ports == (443, 80) and plan.health_probe[-1] == "http://127.0.0.1:80/health"
    assert plan.address == "llm.example.com" and plan.client_url.at(plan.address) == "https://llm.example.com"
    assert plan.log_dir == "/var/log/nginx/fleet" and "nginx -s reopen" in plan.log_rotation
    # the host's node exporter, labelled as Prometheus names the host
    assert plan.node_exporter.labels[contract.LABELS.node] == "gateway-1"
    assert plan.node_exporter.name == "ollama-gateway-1-node-exporter"
    # the component's name as the program and fleet validate give it
    from fleet.plans.naming import gateway_component

    assert gateway_component(1) == "ollama-gateway-1" and gateway_component(0, "other") == "other-gateway-0"


def test_budgets_are_enforced_only_where_prometheus_counts_the_tokens():
    from fleet.plans.gateway import BUDGET_PATHS, budgets_enforced, gateway_host_plan, nginx_plan

    clients = {"gateway.clients": [{"name": "alpha", "tokensPerDay": 1000}, {"name": "beta"}]}
    settings = stack_settings("dev", clients)
    assert budgets_enforced(settings)
    plan = gateway_host_plan(settings, "g", "gateway-0")
    assert plan.budgets == {"alpha": 1000} and plan.paths == BUDGET_PATHS
    assert nginx_plan(settings, nginx.placeholder_upstreams(settings)).paths == BUDGET_PATHS
    command = plan.budget_command("http://prom:9090", authenticated=True)
    assert command[command.index("--prometheus-url") + 1] == "http://prom:9090"
    assert command[command.index("--map-file") + 1] == f"{BUDGET_PATHS.budget_dir}/clients.map"
    assert "--prometheus-user" in command and command.count("--budget") == 1
    assert "--prometheus-user" not in plan.budget_command("http://prom:9090", authenticated=False)
    # no budget, or no Prometheus: nothing enforced, nginx keeps its own paths, no node exporter without monitoring
    assert not budgets_enforced(stack_settings("dev"))
    unmonitored = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update={"enabled": False})})
    assert not budgets_enforced(unmonitored)
    quiet = gateway_host_plan(unmonitored, "g", "gateway-0")
    assert quiet.budgets == {} and quiet.paths == nginx.GatewayPaths() and quiet.node_exporter is None


def test_the_address_clients_use_and_the_certificate_a_tls_gateway_needs():
    import pytest

    from fleet.plans.gateway import gateway_host_plan

    assert gateway_host_plan(stack_settings("dev"), "g", "gateway-0").address == "localhost"
    prod = stack_settings("prod")
    unnamed = prod.model_copy(update={"gateway": prod.gateway.model_copy(update={"domain": None})})
    # the host's public address, known once the cloud decides it
    assert gateway_host_plan(unnamed, "g", "gateway-0").address is None
    plan = gateway_host_plan(prod, "g", "gateway-0")
    plan.check_certificate(True)
    with pytest.raises(ValueError, match="gateway.tls.mode 'acme' needs a certificate and private key"):
        plan.check_certificate(False)
    off = gateway_host_plan(stack_settings("dev", {"gateway.tls": {"mode": "off"}}), "g", "gateway-0")
    off.check_certificate(False)
    assert off.client_ports == (off.client_url.port,) and off.client_url.scheme == "http"


def test_nginx_plan_is_the_stack_gateway_plan_for_the_addresses_given():
    from fleet.plans.gateway import nginx_plan

    dev = stack_settings("dev")
    upstreams = nginx.placeholder_upstreams(dev)
    assert nginx_plan(dev, upstreams, "ollama-monitoring-grafana:3000") == gateway_plan(
        dev, upstreams, "localhost", nginx.GatewayPaths(), "ollama-monitoring-grafana:3000"
    )
