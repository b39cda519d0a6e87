"""Gateway under Pulumi mocks: the nginx container with its rendered files (plain config, secret keys and TLS
key), labels for the policy pack, ports, health check, the nginx exporter beside it, and the gateway log
exporter reading nginx's access-log file from a shared volume."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pytest

from components import images
from components.gateway import Gateway, GatewayArgs
from fleet.plans.gateway import LOG_ROTATION_SCRIPT, gateway_host_plan, gateway_plan, nginx_plan
from docker_mocks import PRIVATE_ADDRESS, PUBLIC_ADDRESS, WireMonitor, is_wire_secret, make_host, settings_of, unwrap
from docker_mocks import plain_values, use_mocks
from fleet import contract, ports
from fleet.exporters import gateway_log
from fleet.capacity import max_conns_per_node
from fleet.config import FleetSettings
from fleet.render import nginx

API_KEYS = {"dev": "devkey0123456789abcdefghijABCDEFGHIJ"}
ADMIN_KEY = "adminkey0123456789abcdefghijABCDEFGHIJKLMN"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEsecretkeymaterial\n-----END PRIVATE KEY-----\n"


@dataclass
class Built:
    monitor: WireMonitor
    settings: FleetSettings
    upstreams: dict[str, list[str]]
    outputs: dict = field(default_factory=dict)

    @property
    def nginx(self):
        return self.monitor.container("gateway")

    def uploads(self) -> dict[str, dict]:
        """Wire form of each upload, by file path (secret markers kept per element)."""
        return {unwrap(u["file"]): u for u in self.monitor.wire_inputs(self.nginx)["uploads"]}


def build_gateway(
    stack: str,
    upstreams: dict[str, list[str]],
    *,
    settings: FleetSettings | None = None,
    tls: bool = True,
    prometheus_url: str | None = None,
    prometheus_password: str | None = None,
    grafana_upstream: str | None = None,
    **host: object,
) -> Built:
    monitor = use_mocks(stack)
    settings = settings or settings_of(stack)
    built = Built(monitor, settings, upstreams)

    @pulumi.runtime.test
    def program():
        gateway = Gateway(
            "ollama-gateway-0",
            GatewayArgs(
                plan=gateway_host_plan(settings, "ollama-gateway-0", "gateway-0"),
                host=make_host(**host),
                nginx=nginx_plan(settings, upstreams, grafana_upstream),
                api_keys=API_KEYS,
                admin_key=ADMIN_KEY,
                certificate_pem=CERT if tls else None,
                private_key_pem=KEY if tls else None,
                prometheus_url=prometheus_url,
                prometheus_password=prometheus_password,
            ),
        )

        async def collect():
            built.outputs["uploads_secret"] = await gateway.container.uploads.is_secret()
            built.outputs["url"] = await gateway.url.future()
            built.outputs["status_target"] = await gateway.status_target.future()
            built.outputs["log_target"] = await gateway.log_target.future()
            built.outputs["node_target"] = await gateway.node_target.future() if gateway.node_target else None

        return pulumi.Output.from_input(asyncio.ensure_future(collect()))

    program()
    return built


DEV_UPSTREAMS = {"cpu": [f"ollama-cpu-0-meter:{ports.METER}"]}
PROD_UPSTREAMS = {"chat": [f"10.70.1.10:{ports.METER}", f"10.70.2.11:{ports.METER}"]}


@pytest.fixture
def dev() -> Built:
    return build_gateway("dev", DEV_UPSTREAMS, transport="local")


@pytest.fixture
def prod() -> Built:
    return build_gateway("prod", PROD_UPSTREAMS, transport="ssh")


def test_nginx_conf_is_plain_and_is_the_rendered_config(dev):
    uploads = dev.uploads()
    conf = uploads["/etc/nginx/nginx.conf"]
    assert not is_wire_secret(conf["content"])
    expected = nginx.render_nginx(gateway_plan(dev.settings, DEV_UPSTREAMS, "localhost"))
    assert conf["content"] == expected
    assert f"server ollama-cpu-0-meter:{ports.METER} max_conns=" in expected
    for key in [*API_KEYS.values(), ADMIN_KEY]:
        assert key not in expected


def test_keys_certificate_and_private_key_are_uploaded_as_secrets(dev):
    uploads = dev.uploads()
    paths = nginx.GatewayPaths()
    for path in (paths.api_keys_include, paths.certificate, paths.certificate_key):
        assert is_wire_secret(uploads[path]["content"]), path
    keys_file = unwrap(uploads[paths.api_keys_include]["content"])
    assert keys_file == nginx.render_api_keys(API_KEYS, ADMIN_KEY)
    assert unwrap(uploads[paths.certificate_key]["content"]) == KEY
    assert unwrap(uploads[paths.api_keys_include]["permissions"]) == "0600"
    assert unwrap(uploads[paths.certificate_key]["permissions"]) == "0600"
    assert dev.outputs["uploads_secret"] is True
    # No secret reaches any other input of any resource in plain form.
    for resource in dev.monitor.registered:
        wire = dev.monitor.wire_inputs(resource)
        for text in (v for v in plain_values(wire) if isinstance(v, str)):
            for secret in (*API_KEYS.values(), ADMIN_KEY, "secretkeymaterial"):
                assert secret not in text, f"{resource.name} carries a secret in plain form"


def test_labels_carry_tls_mode_and_the_capacity_model_max_conns(dev):
    labels = dev.nginx.label_map
    group = dev.settings.node_groups[0]
    expected = max_conns_per_node(group, dev.settings.gateway.queue_per_node)
    assert labels[contract.LABELS.role] == "gateway"
    assert labels[contract.LABELS.tls_mode] == "self-signed"
    assert json.loads(labels[contract.LABELS.upstream_max_conns]) == {"cpu": expected}
    assert json.loads(labels[contract.LABELS.queue_per_node]) == {"cpu": dev.settings.gateway.queue_per_node}
    # The label and the config nginx runs agree.
    conf = dev.uploads()["/etc/nginx/nginx.conf"]["content"]
    assert f"max_conns={expected} " in conf


def test_local_gateway_listens_on_the_bind_address_with_restart_logs_and_health(dev):
    inputs = dev.nginx.inputs
    gateway = dev.settings.gateway
    assert sorted((p["ip"], p["internal"], p["external"]) for p in inputs["ports"]) == sorted(
        [("127.0.0.1", gateway.https_port, gateway.https_port), ("127.0.0.1", gateway.http_port, gateway.http_port)]
    )
    assert inputs["restart"] == "unless-stopped"
    assert inputs["logDriver"] == "json-file" and set(inputs["logOpts"]) == {"max-size", "max-file"}
    assert inputs["healthcheck"]["tests"] == ["CMD", "wget", "-qO", "/dev/null", f"http://127.0.0.1:{gateway.http_port}/health"]
    # /health is answered on that port without a key, even with TLS on (the rest redirects to HTTPS).
    conf = dev.uploads()["/etc/nginx/nginx.conf"]["content"]
    http_server = conf.split(f"listen {gateway.http_port} default_server;")[1].split("server {")[0]
    assert "location = /health" in http_server
    assert dev.outputs["url"] == f"https://localhost:{gateway.https_port}"


def test_exporter_scrapes_stub_status_where_nginx_serves_it(dev):
    exporter = dev.monitor.container("nginx-exporter")
    nginx_name = dev.nginx.inputs["name"]
    uri = f"http://{nginx_name}:{ports.NGINX_STATUS}/stub_status"
    assert f"--nginx.scrape-uri={uri}" in exporter.inputs["command"]
    conf = dev.uploads()["/etc/nginx/nginx.conf"]["content"]
    assert f"listen 0.0.0.0:{ports.NGINX_STATUS};" in conf and "location = /stub_status" in conf
    assert not exporter.inputs.get("ports")  # the shared network suffices; nothing published
    assert dev.outputs["status_target"] == f"{exporter.inputs['name']}:{ports.NGINX_EXPORTER}"
    assert dev.nginx.urn in exporter.depends_on


# ---- the gateway log exporter ----------------------------------------------------------------------------


def test_nginx_writes_the_access_log_file_into_a_volume_the_log_exporter_reads(dev):
    paths = nginx.GatewayPaths()
    log_dir = str(Path(paths.access_log_file).parent)
    conf = dev.uploads()["/etc/nginx/nginx.conf"]["content"]
    # Both: stdout for `docker logs` (the image links access.log there) and the file for the exporter.
    assert f"access_log {paths.access_log} fleet_json;" in conf
    assert f"access_log {paths.access_log_file} fleet_json;" in conf
    assert log_dir != str(Path(paths.access_log).parent)  # not the image's folder of stdout/stderr links
    exporter = dev.monitor.container("gateway-log-exporter")
    volume = dev.monitor.named("ollama-gateway-0-access-log")
    (nginx_mount,) = dev.nginx.inputs["volumes"]
    (exporter_mount,) = exporter.inputs["volumes"]
    assert nginx_mount["volumeName"] == exporter_mount["volumeName"] == volume.inputs["name"]
    assert nginx_mount["containerPath"] == exporter_mount["containerPath"] == log_dir
    assert not nginx_mount.get("readOnly") and exporter_mount["readOnly"] is True
    assert volume.provider.startswith(dev.monitor.urn_of("host-docker"))  # on the gateway's own host
    assert dev.monitor.urn_of("host-ready") in volume.depends_on
    assert {label["label"]: label["value"] for label in volume.inputs["labels"]} == {
        contract.LABELS.environment: dev.settings.environment
    }


def test_log_exporter_runs_the_meter_image_with_the_gateway_log_command(dev):
    exporter = dev.monitor.container("gateway-log-exporter")
    image = dev.monitor.named("ollama-gateway-0-log-exporter-image")
    assert image.inputs["build"]["dockerfile"].endswith("exporter/Dockerfile")
    assert image.inputs["imageName"] == f"ollama-fleet/meter:{images.exporter_tag(dev.settings.images.python)}"
    assert exporter.inputs["image"] == image.outputs["repoDigest"]
    assert exporter.inputs["entrypoints"] == ["python", "-m", "fleet.exporters.gateway_log"]
    clients = [c.name for c in dev.settings.gateway.clients]
    assert exporter.inputs["command"] == gateway_log.exporter_arguments(
        nginx.GatewayPaths().access_log_file, f"0.0.0.0:{ports.GATEWAY_LOG_EXPORTER}", "ollama-gateway-0", clients
    )
    # The command parses as the exporter's own CLI and names every configured client.
    args = gateway_log.build_parser().parse_args(exporter.inputs["command"])
    assert args.client == clients and args.metrics_listen == ("0.0.0.0", ports.GATEWAY_LOG_EXPORTER)
    assert exporter.label_map[contract.LABELS.role] == "gateway-log-exporter"
    assert exporter.label_map[contract.LABELS.environment] == dev.settings.environment
    assert exporter.inputs["restart"] == "unless-stopped"
    assert exporter.inputs["logDriver"] == "json-file" and set(exporter.inputs["logOpts"]) == {"max-size", "max-file"}
    probe = exporter.inputs["healthcheck"]["tests"]
    assert probe[:3] == ["CMD", "python", "-c"] and f"127.0.0.1:{ports.GATEWAY_LOG_EXPORTER}/metrics" in probe[3]
    assert not exporter.inputs.get("ports")  # on the shared network Prometheus reaches it by name
    assert dev.outputs["log_target"] == f"{exporter.inputs['name']}:{ports.GATEWAY_LOG_EXPORTER}"
    assert dev.nginx.urn in exporter.depends_on


def test_the_access_log_file_is_rotated_by_a_script_in_the_nginx_entrypoint(dev):
    upload = dev.uploads()[LOG_ROTATION_SCRIPT]
    assert LOG_ROTATION_SCRIPT.startswith("/docker-entrypoint.d/") and LOG_ROTATION_SCRIPT.endswith(".sh")
    assert unwrap(upload["permissions"]) == "0755"  # the image's entrypoint runs only executable scripts
    script = unwrap(upload["content"])
    assert f"log={nginx.GatewayPaths().access_log_file}\n" in script and "nginx -s reopen" in script


def test_containers_wait_for_the_host_and_run_pinned_images(dev):
    ready = dev.monitor.urn_of("host-ready")
    for container in dev.monitor.containers():
        assert ready in container.depends_on
        if container.label_map[contract.LABELS.role] == "gateway-log-exporter":
            continue  # the exporter image built on the host (test_log_exporter_runs_the_meter_image)
        image = next(r for r in dev.monitor.registered if r.outputs.get("imageId") == container.inputs["image"])
        assert "@sha256:" in image.inputs["name"] and image.inputs["keepLocally"] is True
    assert {dev.monitor.named(n).inputs["name"] for n in ("ollama-gateway-0-nginx-image", "ollama-gateway-0-nginx-exporter-image")} == {
        dev.settings.images.nginx,
        dev.settings.images.nginx_exporter,
    }


def test_aws_gateway_is_public_on_its_client_ports_only(prod):
    gateway = prod.settings.gateway
    published = [(p["ip"], p["internal"]) for c in prod.monitor.containers() for p in c.inputs.get("ports") or []]
    assert sorted(published) == sorted(
        [
            ("0.0.0.0", gateway.https_port),
            ("0.0.0.0", gateway.http_port),
            (PRIVATE_ADDRESS, ports.NGINX_EXPORTER),
            (PRIVATE_ADDRESS, ports.GATEWAY_LOG_EXPORTER),
        ]
    )
    assert prod.outputs["status_target"] == f"{PRIVATE_ADDRESS}:{ports.NGINX_EXPORTER}"
    assert prod.outputs["log_target"] == f"{PRIVATE_ADDRESS}:{ports.GATEWAY_LOG_EXPORTER}"
    assert prod.outputs["url"] == "https://llm.example.com"
    labels = prod.nginx.label_map
    assert labels[contract.LABELS.tls_mode] == "acme"
    conf = prod.uploads()["/etc/nginx/nginx.conf"]["content"]
    for address in PROD_UPSTREAMS["chat"]:
        assert f"server {address} max_conns=" in conf
    assert "server_name llm.example.com;" in conf


def test_without_dns_the_url_is_the_public_address():
    prod = settings_of("prod")
    unnamed = prod.model_copy(update={"gateway": prod.gateway.model_copy(update={"domain": None, "hosted_zone": None})})
    built = build_gateway("prod", PROD_UPSTREAMS, settings=unnamed, transport="ssh")
    assert built.outputs["url"] == f"https://{PUBLIC_ADDRESS}"


def test_upstreams_of_several_groups_keep_their_nodes():
    settings = settings_of("dev")
    group = settings.node_groups[0]
    second = group.model_copy(update={"name": "batch", "count": 2})
    two = settings.model_copy(update={"node_groups": [group, second]})
    upstreams = {"cpu": ["a-meter:11435"], "batch": ["b-meter:11435", "c-meter:11435"]}
    built = build_gateway("dev", upstreams, settings=two, transport="local")
    conf = built.uploads()["/etc/nginx/nginx.conf"]["content"]
    blocks = {name: conf.split(f"upstream fleet_{name} {{")[1].split("}")[0] for name in ("cpu", "batch")}
    assert "a-meter:11435" in blocks["cpu"] and "b-meter" not in blocks["cpu"]
    assert "b-meter:11435" in blocks["batch"] and "c-meter:11435" in blocks["batch"] and "a-meter" not in blocks["batch"]
    assert json.loads(built.nginx.label_map[contract.LABELS.upstream_max_conns]) == {
        "cpu": max_conns_per_node(group, settings.gateway.queue_per_node),
        "batch": max_conns_per_node(second, settings.gateway.queue_per_node),
    }


def test_tls_off_serves_plain_http_without_certificate_files():
    settings = settings_of("dev")
    gateway = settings.gateway.model_copy(update={"tls": settings.gateway.tls.model_copy(update={"mode": "off"})})
    plain = settings.model_copy(update={"gateway": gateway})
    built = build_gateway("dev", DEV_UPSTREAMS, settings=plain, tls=False, transport="local")
    paths = nginx.GatewayPaths()
    assert set(built.uploads()) == {"/etc/nginx/nginx.conf", paths.api_keys_include, paths.router_script, LOG_ROTATION_SCRIPT}
    # the router the config imports travels with it, byte for byte
    assert built.uploads()[paths.router_script]["content"] == nginx.router_script()
    assert f"js_import fleet_router from {paths.router_script};" in built.uploads()["/etc/nginx/nginx.conf"]["content"]
    assert [p["internal"] for p in built.nginx.inputs["ports"]] == [gateway.http_port]
    assert built.outputs["url"] == f"http://localhost:{gateway.http_port}"


def test_tls_without_a_certificate_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a certificate and private key"):
        build_gateway("dev", DEV_UPSTREAMS, tls=False, transport="local")


def _geo(conf: str, variable: str) -> list[str]:
    block = conf.split(f"geo ${variable} {{")[1].split("}")[0]
    return [line.split()[0] for line in block.strip().splitlines() if line.strip().endswith(" 1;")]


def test_local_loopback_clients_are_admitted_as_docker_proxies_them(dev, prod):
    # docker-proxy connects loopback clients from the Docker network's gateway, never from 127.0.0.1.
    conf = dev.uploads()["/etc/nginx/nginx.conf"]["content"]
    gateway = dev.settings.gateway
    assert _geo(conf, "fleet_client_network") == [*gateway.client_cidrs, "172.16.0.0/12", "192.168.0.0/16"]
    assert _geo(conf, "fleet_admin_network") == [*gateway.admin_cidrs, "172.16.0.0/12", "192.168.0.0/16"]
    # Published only on the bind address all the same, and on AWS the lists are the stack's own.
    assert {p["ip"] for p in dev.nginx.inputs["ports"]} == {dev.settings.local.bind_address}
    prod_conf = prod.uploads()["/etc/nginx/nginx.conf"]["content"]
    assert _geo(prod_conf, "fleet_admin_network") == prod.settings.gateway.admin_cidrs


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.mark.tools
def test_the_uploaded_files_load_in_real_nginx(tmp_path):
    """nginx -t on exactly what the container gets (paths moved under a temporary prefix)."""
    if NGINX is None or shutil.which("openssl") is None:
        if os.environ.get("CI"):
            pytest.fail("nginx and openssl are needed (scripts/bootstrap.sh installs them)")
        pytest.skip("nginx or openssl is not installed")
    # Addresses nginx can resolve here; the local stack's CIDR additions and stub_status listener stay, and so
    # does Grafana's container name (looked up at request time).
    built = build_gateway(
        "dev", {"cpu": [f"127.0.0.1:{ports.METER}"]}, grafana_upstream=f"ollama-monitoring-grafana:{ports.GRAFANA}", transport="local"
    )
    uploads = {path: unwrap(u["content"]) for path, u in built.uploads().items()}
    deployed, local = nginx.GatewayPaths(), nginx.GatewayPaths.under(str(tmp_path))
    moves = sorted(zip(dataclasses.astuple(deployed), dataclasses.astuple(local)), key=lambda m: -len(m[0]))
    conf = uploads.pop("/etc/nginx/nginx.conf")
    rotation = uploads.pop(LOG_ROTATION_SCRIPT)
    syntax = subprocess.run(["sh", "-n"], input=rotation, capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    for old, new in moves:
        conf = conf.replace(old, new)
    if os.geteuid() != 0:
        conf = conf.replace("user nginx;\n", "")
    else:
        conf = conf.replace("user nginx;", "user root root;")
    for old, new in moves:
        if old in uploads:
            Path(new).parent.mkdir(parents=True, exist_ok=True)
            Path(new).write_text(uploads.pop(old))
    assert not uploads, f"uploads nginx.conf does not refer to: {sorted(uploads)}"
    for folder in ("logs", "temp"):
        (tmp_path / folder).mkdir(exist_ok=True)
    (tmp_path / "nginx.conf").write_text(conf)
    # The uploaded certificate is a placeholder: swap in a real one for the key/cert pair nginx loads.
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", local.certificate_key, "-out", local.certificate, "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )
    proc = subprocess.run([NGINX, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "location ~ ^/grafana(/|$)" in conf


def _servers(conf: str, gateway) -> tuple[str, str]:
    """The plain-HTTP and the TLS server blocks of a rendered config."""
    http_server = conf.split(f"listen {gateway.http_port} default_server;")[1].split("server {")[0]
    tls_server = conf.split(f"listen {gateway.https_port} ssl default_server;")[1].split("# stub_status")[0]
    return http_server, tls_server


def test_grafana_is_served_on_the_tls_server_from_where_this_host_reaches_it():
    grafana = f"ollama-monitoring-grafana:{ports.GRAFANA}"
    local = build_gateway("dev", DEV_UPSTREAMS, grafana_upstream=grafana, transport="local")
    conf = local.uploads()["/etc/nginx/nginx.conf"]["content"]
    assert conf == nginx.render_nginx(gateway_plan(local.settings, DEV_UPSTREAMS, "localhost", None, grafana))
    http_server, tls_server = _servers(conf, local.settings.gateway)
    assert "grafana" not in http_server
    # on the shared network by container name, through Docker's DNS at request time
    assert "location ~ ^/grafana(/|$)" in tls_server and "resolver 127.0.0.11 valid=10s" in tls_server
    assert f"set $fleet_grafana_upstream http://{grafana};" in tls_server
    # on AWS at the first gateway host's private address (no lookup)
    aws = build_gateway(
        "prod", PROD_UPSTREAMS, grafana_upstream=f"{PRIVATE_ADDRESS}:{ports.GRAFANA}", transport="ssh"
    )
    aws_conf = aws.uploads()["/etc/nginx/nginx.conf"]["content"]
    assert f"proxy_pass http://{PRIVATE_ADDRESS}:{ports.GRAFANA};" in _servers(aws_conf, aws.settings.gateway)[1]
    assert "resolver" not in aws_conf
    # without a Grafana address (monitoring off, or TLS off) nothing of it is rendered
    assert "grafana" not in build_gateway("dev", DEV_UPSTREAMS, transport="local").uploads()["/etc/nginx/nginx.conf"]["content"]


def test_an_aws_gateway_host_has_its_own_node_exporter_and_a_local_one_does_not(dev, prod):
    exporter = prod.monitor.container("node-exporter")
    assert exporter.inputs["networkMode"] == "host"
    assert f"--web.listen-address={PRIVATE_ADDRESS}:{ports.NODE_EXPORTER}" in exporter.inputs["command"]
    assert exporter.label_map["ollama-fleet.node"] == "gateway-0"
    assert prod.outputs["node_target"] == f"{PRIVATE_ADDRESS}:{ports.NODE_EXPORTER}"
    # On the local Docker host the nodes' exporters already report the one host.
    assert dev.outputs["node_target"] is None
    assert not [c for c in dev.monitor.containers() if c.name.endswith("node-exporter")]


def test_a_ttft_target_gives_each_group_the_queue_its_speed_allows():
    from fleet.config import Measured

    settings = settings_of("dev")
    fast = settings.node_groups[0].model_copy(update={"measured": Measured(service_time_seconds=1.0, first_token_seconds=0.2)})
    slow = fast.model_copy(update={"name": "batch", "measured": Measured(service_time_seconds=4.0, first_token_seconds=0.2)})
    gateway = settings.gateway.model_copy(update={"queue_per_node": None, "ttft_target_seconds": 2.2})
    two = settings.model_copy(update={"node_groups": [fast, slow], "gateway": gateway})
    slots = fast.ollama.num_parallel
    built = build_gateway("dev", {"cpu": ["a-meter:11435"], "batch": ["b-meter:11435"]}, settings=two, transport="local")
    labels = built.nginx.label_map
    # (2.2 - 0.2) s × slots ÷ service time
    queues = {"cpu": 2 * slots, "batch": slots // 2}
    assert json.loads(labels[contract.LABELS.queue_per_node]) == queues
    assert json.loads(labels[contract.LABELS.upstream_max_conns]) == {g: slots + q for g, q in queues.items()}
    conf = built.uploads()["/etc/nginx/nginx.conf"]["content"]
    for group, queue in queues.items():
        block = conf.split(f"upstream fleet_{group} {{")[1].split("}")[0]
        assert f"max_conns={slots + queue} " in block


def test_token_budgets_run_a_controller_that_shares_nginx_state_and_pid_namespace():
    from fleet.plans.gateway import BUDGET_PATHS, STATE_DIR
    from fleet.render.prometheus_web import PROMETHEUS_USER
    from fleet.usage import PASSWORD_ENV
    from docker_mocks import is_wire_secret
    from fleet.local.dataplane import load_settings

    settings = load_settings("dev", {"gateway.clients": [{"name": "dev", "tokensPerDay": 5000}, {"name": "ci"}]})
    built = build_gateway(
        "dev", DEV_UPSTREAMS, settings=settings, prometheus_url="http://prom:9090", prometheus_password="pw-1", transport="local"
    )
    controller = built.monitor.container("budget-controller")
    assert controller.inputs["entrypoints"] == ["python", "-m", "fleet.exporters.budget"]
    command = controller.inputs["command"]
    assert command[command.index("--prometheus-url") + 1] == "http://prom:9090"
    assert command[command.index("--budget") + 1] == "dev=5000" and command.count("--budget") == 1
    assert command[command.index("--nginx-pid-file") + 1] == BUDGET_PATHS.pid
    # Prometheus asks for basic auth: the user in the arguments, the password only in the environment
    assert command[command.index("--prometheus-user") + 1] == PROMETHEUS_USER
    envs = controller.inputs["envs"]
    assert "pw-1" not in " ".join(command) and is_wire_secret(envs) and envs["value"] == [f"{PASSWORD_ENV}=pw-1"]
    assert controller.inputs["pidMode"].startswith("container:")  # nginx's PID namespace: SIGHUP reaches it
    assert controller.inputs["capabilities"] == {"drops": ["ALL"]}
    conf = built.uploads()["/etc/nginx/nginx.conf"]["content"]
    assert f"pid {BUDGET_PATHS.pid};" in conf and f"include {BUDGET_PATHS.budget_dir}/*.map;" in conf
    state = built.monitor.named("ollama-gateway-0-state")
    mounts = {m["containerPath"]: m["volumeName"] for m in built.nginx.inputs["volumes"]}
    assert mounts[STATE_DIR] == state.inputs["name"]
    assert controller.inputs["volumes"] == [{"volumeName": state.inputs["name"], "containerPath": STATE_DIR}]
    assert built.nginx.urn in controller.depends_on


def test_no_budget_no_controller(dev):
    assert not [c for c in dev.monitor.containers() if c.label_map.get(contract.LABELS.role) == "budget-controller"]


def test_enforced_budgets_without_prometheus_are_a_clear_error():
    from fleet.local.dataplane import load_settings

    settings = load_settings("dev", {"gateway.clients": [{"name": "dev", "tokensPerDay": 5000}]})
    with pytest.raises(ValueError, match="token budgets are enforced with Prometheus' URL; none was given"):
        build_gateway("dev", DEV_UPSTREAMS, settings=settings, transport="local")


def test_a_gateway_wired_under_another_name_than_planned_is_refused():
    monitor = use_mocks("dev")
    settings = settings_of("dev")

    @pulumi.runtime.test
    def program():
        Gateway(
            "ollama-gateway-1",
            GatewayArgs(
                plan=gateway_host_plan(settings, "ollama-gateway-0", "gateway-0"),
                host=make_host(transport="local"),
                nginx=nginx_plan(settings, DEV_UPSTREAMS),
                api_keys=API_KEYS,
                admin_key=ADMIN_KEY,
                certificate_pem=CERT,
                private_key_pem=KEY,
            ),
        )

    with pytest.raises(ValueError, match="the gateway planned as 'ollama-gateway-0' is wired as 'ollama-gateway-1'"):
        program()
    assert not monitor.containers()
