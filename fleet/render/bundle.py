"""Every rendered file of a stack in one mapping (relative path -> content), for `fleet render` and review.

Node and gateway addresses exist only after deployment; here they are documentation addresses
(192.0.2.0/24, RFC 5737) unless given. Secrets are never part of a bundle: the API-key include, TLS keys and
the cloud-init user data (it carries the host's SSH key) are rendered only at deployment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from fleet import catalog, ports
from fleet.config import FleetSettings
from fleet.render import alertmanager, grafana, nginx, prometheus, rules

NGINX_CONF = "nginx/nginx.conf"
NGINX_ROUTER = "nginx/router.js"  # the njs router nginx.conf imports
PROMETHEUS_CONF = "prometheus/prometheus.yml"
RULES_FILE = "prometheus/rules/fleet.rules.yml"
ALERTMANAGER_CONF = "alertmanager/alertmanager.yml"
GRAFANA_DATASOURCE = "grafana/provisioning/datasources/ollama-fleet.yaml"
GRAFANA_PROVIDER = "grafana/provisioning/dashboards/ollama-fleet.yaml"
GRAFANA_DASHBOARD = f"grafana/dashboards/{grafana.DASHBOARD_FILE}"
README = "README.md"

# Placeholder addresses of the gateway/monitoring host's own exporters.
GATEWAY_NODE_EXPORTER = f"192.0.2.5:{ports.NODE_EXPORTER}"
NGINX_EXPORTER = f"nginx-exporter:{ports.NGINX_EXPORTER}"
GATEWAY_LOG_EXPORTER = f"gateway-log-exporter:{ports.GATEWAY_LOG_EXPORTER}"
ALERTMANAGER = f"alertmanager:{ports.ALERTMANAGER}"

# Placeholder of the retained model volume in the rendered host setup scripts.
PLACEHOLDER_VOLUME_ID = "vol-00000000000000000"
HOST_MODELS_PATH = "/opt/ollama/models"
HOST_CONFIG_PATH = "/opt/ollama-fleet"


def _cloud_init_files(settings: FleetSettings) -> dict[str, str]:
    """Setup scripts of the AWS hosts (one per node group, and the gateway host), when that renderer exists."""
    try:
        from fleet.render import cloud_init
    except ImportError:
        return {}
    if hasattr(cloud_init, "bundle_files"):
        return dict(cloud_init.bundle_files(settings))
    if settings.target != "aws" or settings.aws is None:
        return {}
    files: dict[str, str] = {}
    hosts = [
        (f"{g.name}-0", "ollama", catalog.find_instance(g.instance_type).gpus) for g in settings.node_groups
    ] + [("gateway-0", "gateway", 0)]
    for host_name, role, gpus in hosts:
        files[f"cloud-init/{host_name}-setup.sh"] = cloud_init.render_setup_script(
            host_name=host_name,
            role=role,
            ssh_user=settings.aws.ssh_user,
            gpus=gpus,
            model_volume=cloud_init.ModelVolume(PLACEHOLDER_VOLUME_ID) if role == "ollama" else None,
            models_path=HOST_MODELS_PATH,
            config_path=HOST_CONFIG_PATH,
        )
    return files


def _readme(stack: str, files: Sequence[str]) -> str:
    lines = [
        f"# Rendered configuration of stack `{stack}`",
        "",
        "Written by `fleet render`; the deployment renders the same files with the real addresses.",
        "Addresses in 192.0.2.0/24 (RFC 5737) and the model volume id "
        f"`{PLACEHOLDER_VOLUME_ID}` stand for values known only after deployment.",
        "Not included, because they are secret: the API-key include of nginx, TLS keys, cloud-init user data; "
        "the alert receivers' secrets are placeholders (`secret.invalid` URLs, `<secret …>` strings).",
        "",
        "Files:",
        "",
    ]
    lines += [f"- `{path}`" for path in files]
    return "\n".join(lines) + "\n"


def render_bundle(
    settings: FleetSettings,
    stack: str,
    *,
    upstreams: Mapping[str, Sequence[str]] | None = None,
    nodes: Sequence[prometheus.NodeTarget] | None = None,
) -> dict[str, str]:
    """All rendered files of a stack: relative path -> content (no secrets)."""
    plan = nginx.build_gateway_plan(settings, upstreams or nginx.placeholder_upstreams(settings))
    files = {NGINX_CONF: nginx.render_nginx(plan), NGINX_ROUTER: nginx.router_script()}
    if settings.monitoring.enabled:
        prom_plan = prometheus.build_prometheus_plan(
            settings,
            nodes=nodes if nodes is not None else prometheus.placeholder_node_targets(settings),
            nginx_exporters=[NGINX_EXPORTER],
            gateway_log_exporters=[GATEWAY_LOG_EXPORTER],
            gateway_node_exporters={"gateway-0": GATEWAY_NODE_EXPORTER},
            stack=stack,
            alertmanagers=[ALERTMANAGER],
        )
        files[PROMETHEUS_CONF] = prometheus.render_prometheus(prom_plan)
        files[RULES_FILE] = rules.render_rules(settings)
        files[ALERTMANAGER_CONF] = alertmanager.render_alertmanager(settings, alertmanager.placeholder_secrets(settings))
        files[GRAFANA_DATASOURCE] = grafana.render_datasource(scrape_interval=settings.monitoring.scrape_interval)
        files[GRAFANA_PROVIDER] = grafana.render_dashboard_provider()
        files[GRAFANA_DASHBOARD] = grafana.render_dashboard(settings)
    files.update(_cloud_init_files(settings))
    files[README] = _readme(stack, sorted(files))
    return files


def write_bundle(files: Mapping[str, str], out: Path) -> list[Path]:
    """Write the files under `out` (created if needed); returns the written paths."""
    written = []
    root = out.resolve()
    for relative, content in sorted(files.items()):
        target = (root / relative).resolve()
        if root not in target.parents:
            raise ValueError(f"bundle path {relative!r} leaves the output folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        written.append(target)
    return written
