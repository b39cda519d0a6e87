"""Prometheus: the scrape configuration of a fleet, from the stack settings plus the runtime target addresses.

Jobs (their names are used by the alert rules and dashboards):

* `ollama-meter`: each node's metering exporter (`ports.METER_METRICS`), labelled with its `group`;
  the exporter labels its own series with `node` and `model`.
* `nginx`: the nginx exporter beside the gateway (stub_status).
* `gateway-log`: the gateway log exporter beside the gateway (`fleet.exporters.gateway_log`: the gateway's own answers,
  from its access log); it labels its series with `gateway`.
* `node`: node exporters of the Ollama hosts and the gateway/monitoring host, labelled `node`, `group`.
* `dcgm`: NVIDIA DCGM exporters of GPU hosts, labelled `node`, `group`.
* `prometheus`: Prometheus itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import yaml

from fleet import catalog, ports
from fleet.config import FleetSettings, NodeGroup
from fleet.render.prometheus_web import PROMETHEUS_USER

JOB_METER = "ollama-meter"
JOB_NGINX = "nginx"
JOB_GATEWAY_LOG = "gateway-log"
JOB_NODE = "node"
JOB_DCGM = "dcgm"
JOB_PROMETHEUS = "prometheus"

DEFAULT_RULES_FILE = "/etc/prometheus/rules/fleet.rules.yml"

_TARGET = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)$")


class PrometheusPlanError(ValueError):
    """A target or setting the scrape config cannot be rendered with."""


def is_gpu_group(group: NodeGroup) -> bool:
    instance = catalog.find_instance(group.instance_type)
    return bool(instance and instance.gpus > 0)


@dataclass(frozen=True)
class NodeTarget:
    """One Ollama host and the exporters that run on it."""

    name: str  # e.g. chat-0; the `node` label of the node/dcgm jobs (the meter sets its own `node`)
    group: str
    host: str  # address or DNS name, without a port
    gpu: bool
    meter_port: int = ports.METER_METRICS
    node_exporter_port: int | None = ports.NODE_EXPORTER  # None: no node exporter on this host
    dcgm_port: int | None = ports.DCGM_EXPORTER  # used only when `gpu`

    def __post_init__(self) -> None:
        if not _HOST.fullmatch(self.host):
            raise PrometheusPlanError(f"node {self.name!r}: host {self.host!r} must be an address or DNS name without a port")


@dataclass(frozen=True)
class StaticGroup:
    targets: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    groups: tuple[StaticGroup, ...]
    metrics_path: str = "/metrics"
    password_file: str | None = None  # basic auth (user PROMETHEUS_USER) read from this file at each scrape

    @property
    def targets(self) -> list[str]:
        return [t for g in self.groups for t in g.targets]


@dataclass(frozen=True)
class PrometheusPlan:
    scrape_interval: str
    evaluation_interval: str
    retention: str
    external_labels: Mapping[str, str]
    rule_files: tuple[str, ...]
    jobs: tuple[ScrapeJob, ...]
    alertmanagers: tuple[str, ...] = ()  # `host:port` of the Alertmanagers alerts are sent to

    def job(self, name: str) -> ScrapeJob | None:
        return next((j for j in self.jobs if j.name == name), None)


def _check_path(value: str, where: str) -> str:
    if not re.fullmatch(r"/[A-Za-z0-9_./-]+", value, flags=re.ASCII):
        raise PrometheusPlanError(f"{where}: {value!r} must be an absolute path of letters, digits and ._/-")
    return value


def _check_target(value: str, where: str) -> str:
    match = _TARGET.fullmatch(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise PrometheusPlanError(f"{where}: {value!r} must be `host:port`")
    return value


def _join(host: str, port: int) -> str:
    return f"{host}:{port}"


def node_targets(
    settings: FleetSettings,
    hosts: Mapping[str, Sequence[str]],
    *,
    meter_ports: Mapping[str, int] | None = None,
    node_exporter: bool = True,
) -> list[NodeTarget]:
    """NodeTargets from each group's host addresses (nodes named `<group>-<index>`).

    `meter_ports` overrides the metrics port per node name (loopback: several meters on one host).
    """
    names = {g.name for g in settings.node_groups}
    unknown = sorted(set(hosts) - names)
    if unknown:
        raise PrometheusPlanError(f"hosts: unknown node group(s) {', '.join(unknown)}")
    targets = []
    for group in settings.node_groups:
        for index, host in enumerate(hosts.get(group.name, ())):
            name = f"{group.name}-{index}"
            targets.append(
                NodeTarget(
                    name=name,
                    group=group.name,
                    host=host,
                    gpu=is_gpu_group(group),
                    meter_port=(meter_ports or {}).get(name, ports.METER_METRICS),
                    node_exporter_port=ports.NODE_EXPORTER if node_exporter else None,
                )
            )
    return targets


def placeholder_node_targets(settings: FleetSettings) -> list[NodeTarget]:
    """Documentation addresses (RFC 5737) for nodes whose addresses exist only after deployment."""
    hosts: dict[str, list[str]] = {}
    host = 10
    for group in settings.node_groups:
        hosts[group.name] = [f"192.0.2.{host + i}" for i in range(group.count)]
        host += group.count
    return node_targets(settings, hosts)


def build_prometheus_plan(
    settings: FleetSettings,
    *,
    nodes: Sequence[NodeTarget],
    nginx_exporters: Sequence[str] = (),
    gateway_log_exporters: Sequence[str] = (),
    gateway_node_exporters: Mapping[str, str] | None = None,
    prometheus: str = f"localhost:{ports.PROMETHEUS}",
    rule_files: Sequence[str] = (DEFAULT_RULES_FILE,),
    stack: str | None = None,
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
    alertmanagers: Sequence[str] = (),
    self_password_file: str | None = None,
) -> PrometheusPlan:
    """The scrape plan. `nginx_exporters` and `gateway_log_exporters` are `host:port` of the nginx exporters
    and gateway log exporters (one of each per gateway host); `gateway_node_exporters`
    maps a host name (its `node` label, e.g. `gateway-0`) to the `host:port` of its node exporter.
    The intervals default to `monitoring.scrapeInterval` (loopback tests may scrape faster). `alertmanagers`
    are the `host:port` of the Alertmanagers that firing and resolved alerts are sent to. `self_password_file`
    holds Prometheus' own password when its web config asks for basic auth (its self-scrape sends it)."""
    known_groups = {g.name: g for g in settings.node_groups}
    for node in nodes:
        if node.group not in known_groups:
            raise PrometheusPlanError(f"node {node.name!r}: unknown node group {node.group!r}")
    node_names = [n.name for n in nodes]
    if len(set(node_names)) != len(node_names):
        raise PrometheusPlanError(f"node names repeat: {node_names}")

    meter_groups = []
    for group in settings.node_groups:
        members = [n for n in nodes if n.group == group.name]
        if members:
            meter_groups.append(
                StaticGroup(
                    targets=tuple(_check_target(_join(n.host, n.meter_port), f"meter of {n.name}") for n in members),
                    labels={"group": group.name, "instance_type": group.instance_type},
                )
            )
    node_groups = [
        StaticGroup(
            targets=(_check_target(_join(n.host, n.node_exporter_port), f"node exporter of {n.name}"),),
            labels={"node": n.name, "group": n.group},
        )
        for n in nodes
        if n.node_exporter_port is not None
    ]
    for name, target in sorted((gateway_node_exporters or {}).items()):
        node_groups.append(
            StaticGroup(targets=(_check_target(target, f"node exporter of {name}"),), labels={"node": name, "group": "gateway"})
        )
    dcgm_groups = [
        StaticGroup(
            targets=(_check_target(_join(n.host, n.dcgm_port), f"dcgm exporter of {n.name}"),),
            labels={"node": n.name, "group": n.group},
        )
        for n in nodes
        if n.gpu and n.dcgm_port is not None
    ]
    jobs = [
        ScrapeJob(
            JOB_PROMETHEUS,
            (StaticGroup((_check_target(prometheus, "prometheus"),)),),
            password_file=_check_path(self_password_file, "self_password_file") if self_password_file else None,
        ),
        ScrapeJob(JOB_METER, tuple(meter_groups)),
        ScrapeJob(
            JOB_NGINX,
            (StaticGroup(tuple(_check_target(t, "nginx exporter") for t in nginx_exporters)),) if nginx_exporters else (),
        ),
        ScrapeJob(
            JOB_GATEWAY_LOG,
            (StaticGroup(tuple(_check_target(t, "gateway log exporter") for t in gateway_log_exporters)),)
            if gateway_log_exporters
            else (),
        ),
        ScrapeJob(JOB_NODE, tuple(node_groups)),
        ScrapeJob(JOB_DCGM, tuple(dcgm_groups)),
    ]
    labels = {"environment": settings.environment, "fleet": "ollama-fleet"}
    if stack:
        labels["stack"] = stack
    return PrometheusPlan(
        scrape_interval=scrape_interval or settings.monitoring.scrape_interval,
        evaluation_interval=evaluation_interval or scrape_interval or settings.monitoring.scrape_interval,
        retention=settings.monitoring.retention,
        external_labels=labels,
        rule_files=tuple(rule_files),
        jobs=tuple(j for j in jobs if j.groups),
        alertmanagers=tuple(_check_target(t, "alertmanager") for t in alertmanagers),
    )


def render_prometheus(plan: PrometheusPlan) -> str:
    """prometheus.yml (valid for Prometheus 2.42+ and 3.x)."""
    config = {
        "global": {
            "scrape_interval": plan.scrape_interval,
            "evaluation_interval": plan.evaluation_interval,
            "external_labels": dict(plan.external_labels),
        },
        **({"alerting": {"alertmanagers": [{"static_configs": [{"targets": list(plan.alertmanagers)}]}]}} if plan.alertmanagers else {}),
        "rule_files": list(plan.rule_files),
        "scrape_configs": [
            {
                "job_name": job.name,
                "metrics_path": job.metrics_path,
                **({"basic_auth": {"username": PROMETHEUS_USER, "password_file": job.password_file}} if job.password_file else {}),
                "static_configs": [
                    {"targets": list(g.targets), **({"labels": dict(g.labels)} if g.labels else {})} for g in job.groups
                ],
            }
            for job in plan.jobs
        ],
    }
    header = "# Prometheus of ollama-fleet, rendered by fleet.render.prometheus.render_prometheus. Do not edit by hand.\n"
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def prometheus_args(
    plan: PrometheusPlan,
    *,
    config_file: str = "/etc/prometheus/prometheus.yml",
    storage_path: str = "/prometheus",
    listen_address: str = f"0.0.0.0:{ports.PROMETHEUS}",
    web_config_file: str | None = None,
) -> list[str]:
    """Command-line flags of the Prometheus server (retention is a flag, not part of the config file);
    `web_config_file` turns on basic auth (fleet.render.prometheus_web)."""
    args = [
        f"--config.file={config_file}",
        f"--storage.tsdb.path={storage_path}",
        f"--storage.tsdb.retention.time={plan.retention}",
        f"--web.listen-address={listen_address}",
    ]
    if web_config_file:
        args.append(f"--web.config.file={_check_path(web_config_file, 'web_config_file')}")
    return args
