"""The whole fleet: hosts, Ollama nodes, the gateway and monitoring, wired from one typed config."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_tls as tls

from components.host import Host
from components.secrets import Secrets, SecretsArgs
from fleet.config import PROJECT, FleetSettings
from fleet.plans.monitoring import MonitoringPlan, ServicePlan, monitoring_plan
from fleet.plans.naming import monitoring_component
from fleet.plans.secrets import secrets_plan

TOKEN = f"{PROJECT}:index:Fleet"


@dataclass
class FleetArgs:
    settings: FleetSettings
    stack: str
    # Secret config values (None where the stack does not set them; then they are generated).
    api_keys_json: pulumi.Output[str] | None = None
    admin_key: pulumi.Output[str] | None = None
    grafana_password: pulumi.Output[str] | None = None
    prometheus_password: pulumi.Output[str] | None = None
    tls_certificate: pulumi.Output[str] | None = None
    tls_private_key: pulumi.Output[str] | None = None
    alert_receiver_secrets_json: pulumi.Output[str] | None = None


@dataclass
class _Site:
    """Where things run (the gateway/monitoring host(s), one host per Ollama node by group) and how clients reach it."""

    gateway_hosts: list[Host]
    node_hosts: dict[str, list[Host]] = field(default_factory=dict)
    certificate: tuple[pulumi.Output[str], pulumi.Output[str]] | None = None
    # The public URL where DNS names the gateway; None means the gateway's own address.
    url: pulumi.Output[str] | None = None
    # The AMI every GPU node boots (AWS only).
    node_ami: pulumi.Input[str] | None = None


class Fleet(pulumi.ComponentResource):
    gateway_url: pulumi.Output[str]
    node_addresses: pulumi.Output[list[str]]
    grafana_url: pulumi.Output[str] | None
    prometheus_url: pulumi.Output[str] | None
    api_keys: pulumi.Output[dict[str, str]]
    admin_key: pulumi.Output[str]
    grafana_password: pulumi.Output[str]
    prometheus_password: pulumi.Output[str]
    deployed: pulumi.Output[dict]

    def __init__(self, name: str, args: FleetArgs, opts: pulumi.ResourceOptions | None = None):
        settings = args.settings
        # The monitoring's plan first: what it refuses (a receiver whose secret the stack does not set) stops the
        # program before any resource is registered.
        planned_monitoring: MonitoringPlan | None = None
        if settings.monitoring.enabled:
            planned_monitoring = monitoring_plan(
                settings,
                args.stack,
                receiver_secrets_set=args.alert_receiver_secrets_json is not None,
                component=monitoring_component(name),
            )
        super().__init__(TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        secrets = Secrets(
            f"{name}-secrets",
            SecretsArgs(secrets_plan(settings), args.api_keys_json, args.admin_key, args.grafana_password, args.prometheus_password),
            child,
        )

        site = self._aws(name, args) if settings.target == "aws" else self._local(name, args)

        from components.gateway import Gateway, GatewayArgs
        from components.ollama_node import OllamaNode, OllamaNodeArgs
        from components.containers import resolve_grouped
        from fleet.plans.gateway import gateway_host_plan, nginx_plan, serves_grafana
        from fleet.plans.naming import gateway_component, node_component
        from fleet.plans.node import node_plan
        from fleet.plans.scrape import GatewayScrape, gateway_name, node_name, scrape_targets

        upstreams: dict[str, list[pulumi.Output[str]]] = {}
        node_addresses: dict[str, pulumi.Output[str]] = {}  # node name -> where its exporters answer
        digests: dict[str, pulumi.Output[dict[str, str]]] = {}
        for group in settings.node_groups:
            for index, host in enumerate(site.node_hosts[group.name]):
                plan = node_plan(settings, group, index, node_component(group.name, index, name), host.config_path)
                node = OllamaNode(plan.component, OllamaNodeArgs(plan=plan, host=host), child)
                upstreams.setdefault(group.name, []).append(node.upstream_address)
                digests.setdefault(group.name, node.model_digests)  # every node of a group pulls the same
                node_addresses[node_name(group, index)] = node.metrics_address

        gateways = []
        gateway_exporters: list[GatewayScrape[pulumi.Output[str]]] = []
        prometheus_url = self._prometheus_url(planned_monitoring, site) if planned_monitoring else None
        serve_grafana = serves_grafana(settings)
        grafana_upstream = self._grafana_upstream(planned_monitoring, site) if serve_grafana and planned_monitoring else None
        # nginx's plan depends on the node addresses (known after their containers exist), not on any secret.
        nginx = pulumi.Output.all(resolve_grouped(upstreams), grafana_upstream).apply(
            lambda values: nginx_plan(settings, values[0], values[1])
        )
        for index, host in enumerate(site.gateway_hosts):
            gateway_plan = gateway_host_plan(settings, gateway_component(index, name), gateway_name(index))
            gateway = Gateway(
                gateway_plan.component,
                GatewayArgs(
                    plan=gateway_plan,
                    host=host,
                    nginx=nginx,
                    api_keys=secrets.api_keys,
                    admin_key=secrets.admin_key,
                    certificate_pem=site.certificate[0] if site.certificate else None,
                    private_key_pem=site.certificate[1] if site.certificate else None,
                    prometheus_url=prometheus_url,
                    prometheus_password=secrets.prometheus_password,
                ),
                child,
            )
            gateways.append(gateway)
            gateway_exporters.append(
                GatewayScrape(gateway_name(index), gateway.status_target, gateway.log_target, gateway.node_target)
            )

        self.gateway_url = site.url or gateways[0].url
        self.grafana_url = None
        self.prometheus_url = None
        if planned_monitoring is not None:
            from fleet.gateway_routes import GRAFANA_PATH
            from fleet.plans import monitoring as monitoring_plans

            from components.monitoring import Monitoring, MonitoringArgs, resolve_targets

            targets = resolve_targets(scrape_targets(settings, node_addresses, gateway_exporters))
            receiver_secrets = args.alert_receiver_secrets_json or pulumi.Output.from_input("")
            monitoring = Monitoring(
                planned_monitoring.component,
                MonitoringArgs(
                    plan=planned_monitoring,
                    host=site.gateway_hosts[0],
                    scrape=targets.apply(lambda t: monitoring_plans.prometheus_scrape(settings, args.stack, planned_monitoring, t)),
                    alertmanager_config=receiver_secrets.apply(lambda text: monitoring_plans.alertmanager_file(settings, text)),
                    grafana_password=secrets.grafana_password,
                    prometheus_password=secrets.prometheus_password,
                    prometheus_salt=secrets.prometheus_salt,
                    grafana_public_url=self.gateway_url.apply(lambda url: url.rstrip("/") + GRAFANA_PATH)
                    if serve_grafana
                    else None,
                ),
                child,
            )
            self.grafana_url = monitoring.grafana_url
            self.prometheus_url = monitoring.prometheus_url

        self.node_addresses = pulumi.Output.all(*[a for group in upstreams.values() for a in group])
        # What this stack runs, for its deployment record and `fleet promote`: image references (pinned by
        # digest), model digests per node group as Ollama lists them, the AMI of the GPU nodes.
        self.deployed = pulumi.Output.all(
            images=settings.images.model_dump(by_alias=True),
            models=pulumi.Output.all(**digests) if digests else {},
            amiId=site.node_ami,
        )
        self.api_keys = secrets.api_keys
        self.admin_key = secrets.admin_key
        self.grafana_password = secrets.grafana_password
        self.prometheus_password = secrets.prometheus_password
        self.register_outputs(
            {
                "gatewayUrl": self.gateway_url,
                "nodeAddresses": self.node_addresses,
                "grafanaUrl": self.grafana_url,
                "prometheusUrl": self.prometheus_url,
            }
        )

    @staticmethod
    def _prometheus_url(plan: MonitoringPlan, site: _Site) -> pulumi.Output[str]:
        """The planned Prometheus as the gateways' containers reach it (it runs on the first gateway host)."""
        return Fleet._monitoring_service(plan.prometheus, site).apply(lambda service: f"http://{service}")

    @staticmethod
    def _grafana_upstream(plan: MonitoringPlan, site: _Site) -> pulumi.Output[str]:
        """The planned Grafana as the gateways' nginx reaches it (it runs on the first gateway host; the security
        group admits no one else at its port). The private address rather than a Docker network shared by the two
        components: the second gateway host of an HA stack reaches it the same way."""
        return Fleet._monitoring_service(plan.grafana, site)

    @staticmethod
    def _monitoring_service(service: ServicePlan, site: _Site) -> pulumi.Output[str]:
        """`address:port` of a planned monitoring container for the gateways' containers: its planned address
        (container name) on a shared Docker network, else the first gateway host's private address at its planned
        port, where it is published."""
        host = site.gateway_hosts[0]
        if host.shared_network is not None:
            return pulumi.Output.from_input(service.address)
        port = service.port
        return pulumi.Output.from_input(host.private_address).apply(lambda address: f"{address}:{port}")

    def _certificate(
        self, name: str, args: FleetArgs, zone_id: pulumi.Output[str] | None
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]] | None:
        """The gateway's certificate and key (secret Outputs), or None when TLS is off."""
        from components.tls import GatewayCertificate, GatewayCertificateArgs
        from fleet.plans.tls import certificate_plan

        if args.settings.gateway.tls.mode == "off":
            return None
        cert = GatewayCertificate(
            f"{name}-cert",
            GatewayCertificateArgs(
                plan=certificate_plan(args.settings, args.stack),
                zone_id=zone_id,
                provided_cert=args.tls_certificate,
                provided_key=args.tls_private_key,
            ),
            pulumi.ResourceOptions(parent=self),
        )
        return cert.certificate_pem, cert.private_key_pem

    def _local(self, name: str, args: FleetArgs) -> _Site:
        from components.local_host import LocalHost, LocalHostArgs
        from fleet.plans.placement import LocalHostPlan

        settings = args.settings
        plan = LocalHostPlan.of(settings, f"{name}-local")
        local = LocalHost(plan.name, LocalHostArgs(plan=plan), pulumi.ResourceOptions(parent=self))
        certificate = self._certificate(name, args, None)
        return _Site(
            gateway_hosts=[local.host],
            node_hosts={g.name: [local.host] * g.count for g in settings.node_groups},
            certificate=certificate,
        )

    def _aws(self, name: str, args: FleetArgs) -> _Site:
        from components.dns import Dns, DnsArgs
        from components.gpu_host import GpuHost, GpuHostArgs, node_ami
        from components.network import Network, NetworkArgs
        from fleet.plans import gateway as plans_gateway
        from fleet.plans.dns import dns_plan
        from fleet.plans.hosts import host_plan
        from fleet.plans.network import network_plan

        settings = args.settings
        aws = settings.aws
        assert aws is not None  # guaranteed by FleetSettings validation
        child = pulumi.ResourceOptions(parent=self)
        network = Network(f"{name}-net", NetworkArgs(plan=network_plan(settings, args.stack)), child)
        # One SSH key pair for the Docker provider and remote commands; it never leaves Pulumi state (secret).
        ssh_key = tls.PrivateKey(f"{name}-ssh", algorithm="ED25519", opts=child)
        ami = node_ami(settings, self)

        def host(
            host_name: str, role: str, instance_type: str, zone_index: int, volume_gb: int | None, root_volume_gb: int | None = None
        ) -> GpuHost:
            zone_index %= len(aws.zones)
            plan = host_plan(
                settings,
                args.stack,
                name=host_name,
                role=role,
                instance_type=instance_type,
                zone=aws.zones[zone_index],
                model_volume_gb=volume_gb,
                root_volume_gb=root_volume_gb,
            )
            return GpuHost(
                host_name,
                GpuHostArgs(
                    plan=plan,
                    subnet_id=network.subnet_ids[zone_index],
                    security_group_ids=[network.gateway_sg_id if role == "gateway" else network.node_sg_id],
                    ssh_public_key=ssh_key.public_key_openssh,
                    ssh_private_key=pulumi.Output.secret(ssh_key.private_key_openssh),
                    ami=ami if role == "node" else None,
                ),
                child,
            )

        gateway_hosts = [
            host(f"{name}-gateway-host-{i}", "gateway", settings.gateway.instance_type, i, None)
            for i in range(plans_gateway.gateway_hosts(settings))
        ]
        node_hosts: dict[str, list[Host]] = {}
        for group in settings.node_groups:
            # Spread each group's nodes round-robin over the zones.
            node_hosts[group.name] = [
                host(
                    f"{name}-{group.name}-host-{i}", "node", group.instance_type, i, group.model_volume_gb, group.root_volume_gb
                ).host
                for i in range(group.count)
            ]

        fqdn = plans_gateway.server_name(settings)
        dns = None
        if fqdn:
            dns = Dns(
                f"{name}-dns",
                DnsArgs(
                    plan=dns_plan(settings, args.stack),
                    gateway_public_ips=[h.public_ip for h in gateway_hosts],
                    gateway_instance_ids=[h.instance.id for h in gateway_hosts],
                ),
                child,
            )
        certificate = self._certificate(name, args, dns.zone_id if dns else None)
        return _Site(
            gateway_hosts=[h.host for h in gateway_hosts],
            node_hosts=node_hosts,
            certificate=certificate,
            url=dns.url if dns else None,
            node_ami=ami,
        )
