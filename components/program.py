"""The Pulumi program: load the stack's config, build the fleet, export its outputs.

Kept apart from `__main__.py` so the offline preview and the tests run exactly this code under mocks.
"""

from __future__ import annotations

import pulumi

from components.fleet import Fleet, FleetArgs
from fleet.config import FLEET_KEY, PROJECT, FleetSettings
from fleet.plans.naming import FLEET
from fleet.stack_file import StackConfigError, check_environment, parse_settings


def settings_from_pulumi_config(stack: str) -> FleetSettings:
    """Read the fleet object of `stack` through `pulumi.Config` and validate it as `fleet validate` does."""
    stack_file = f"Pulumi.{stack}.yaml"
    raw = pulumi.Config(PROJECT).get_object("fleet")
    if raw is None:
        raise StackConfigError(stack_file, [f"{FLEET_KEY}: required key is missing"])
    settings = parse_settings(raw, stack_file)
    check_environment(settings, stack, stack_file)
    return settings


def run() -> Fleet:
    stack = pulumi.get_stack()
    settings = settings_from_pulumi_config(stack)
    config = pulumi.Config(PROJECT)
    fleet = Fleet(
        FLEET,
        FleetArgs(
            settings=settings,
            stack=stack,
            api_keys_json=config.get_secret("apiKeys"),
            admin_key=config.get_secret("adminApiKey"),
            grafana_password=config.get_secret("grafanaAdminPassword"),
            prometheus_password=config.get_secret("prometheusPassword"),
            tls_certificate=config.get_secret("tlsCertificate"),
            tls_private_key=config.get_secret("tlsPrivateKey"),
            alert_receiver_secrets_json=config.get_secret("alertReceiverSecrets"),
        ),
    )
    pulumi.export("gatewayUrl", fleet.gateway_url)
    pulumi.export("nodeAddresses", fleet.node_addresses)
    pulumi.export("deployed", fleet.deployed)
    if fleet.grafana_url is not None:
        pulumi.export("grafanaUrl", fleet.grafana_url)
        pulumi.export("prometheusUrl", fleet.prometheus_url)
    # Secret outputs: `pulumi stack output apiKeys --show-secrets` hands keys to their holders.
    pulumi.export("apiKeys", pulumi.Output.secret(fleet.api_keys))
    pulumi.export("adminApiKey", pulumi.Output.secret(fleet.admin_key))
    pulumi.export("grafanaAdminPassword", pulumi.Output.secret(fleet.grafana_password))
    pulumi.export("prometheusPassword", pulumi.Output.secret(fleet.prometheus_password))
    return fleet
