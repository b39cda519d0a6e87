"""The plans' own checks, on a stack file alone: `fleet validate` and `fleet preview` run every planner of the
program before anything else, so what a planner would refuse half way through a run is a config error that
names the stack file and the key.

Addresses that exist only once the stack is deployed are stood in for by documentation addresses (RFC 5737), as
`fleet render` does; of the secret config only the keys the stack sets are known (the values stay encrypted).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fleet.config import FLEET_KEY, FleetSettings
from fleet.plans import gateway as gateway_plans
from fleet.plans.dns import dns_plan
from fleet.plans.monitoring import monitoring_plan, monitoring_problems, prometheus_scrape
from fleet.plans.naming import gateway_component, node_component
from fleet.plans.network import network_plan
from fleet.plans.node import node_plan
from fleet.plans.scrape import gateway_name, placeholder_targets
from fleet.plans.tls import certificate_plan
from fleet.render import alertmanager, cloud_init, nginx, prometheus
from fleet.stack_file import StackConfig, StackConfigError

# A planner's message that starts with a key of the stack (`gateway.domain: ...`).
_KEYED = re.compile(r"^(?:aws|gateway|local|monitoring|nodeGroups|policy)(?:[.\[][A-Za-z0-9_.\[\]]*)?: ")


def _network(stack: StackConfig) -> None:
    if stack.settings.target == "aws":
        network_plan(stack.settings, stack.stack)


def _nodes(stack: StackConfig) -> None:
    """Every node's plan (its containers, labels, model steps), on a host whose files live where the program's do."""
    settings = stack.settings
    for group_index, group in enumerate(settings.node_groups):
        for index in range(group.count):
            try:
                node_plan(settings, group, index, node_component(group.name, index), cloud_init.CONFIG_PATH)
            except ValueError as error:
                if _KEYED.match(str(error)):
                    raise
                raise ValueError(
                    f"nodeGroups[{group_index}]: node {index} of group {group.name!r} cannot be planned: {error}"
                ) from error


def _gateway(stack: StackConfig) -> None:
    settings = stack.settings
    grafana_upstream = None
    if gateway_plans.serves_grafana(settings):
        # The planned Grafana: by its address on the local host's shared network, else at a host's private address.
        grafana = monitoring_plan(settings, stack.stack, receiver_secrets_set=True).grafana
        grafana_upstream = grafana.address if settings.target == "local" else f"198.51.100.10:{grafana.port}"
    nginx.render_nginx(gateway_plans.nginx_plan(settings, nginx.placeholder_upstreams(settings), grafana_upstream))
    for index in range(gateway_plans.gateway_hosts(settings)):
        gateway_plans.gateway_host_plan(settings, gateway_component(index), gateway_name(index))


def _edge(stack: StackConfig) -> None:
    """The gateway's public name (AWS) and its certificate."""
    if stack.settings.target == "aws":
        dns_plan(stack.settings, stack.stack)
    certificate_plan(stack.settings, stack.stack)


def _monitoring(stack: StackConfig) -> None:
    settings = stack.settings
    if not settings.monitoring.enabled:
        return
    # The receivers' unset secrets are reported first, on their own (plan_problems).
    plan = monitoring_plan(settings, stack.stack, receiver_secrets_set=True)
    targets = placeholder_targets(
        settings, gateway_plans.gateway_hosts(settings), gateway_node_exporters=settings.target == "aws"
    )
    prometheus.render_prometheus(prometheus_scrape(settings, stack.stack, plan, targets))
    alertmanager.render_alertmanager(settings, alertmanager.placeholder_secrets(settings))


# Each planner with the section of the stack it plans from (named when its message names no key).
PLANNERS: tuple[tuple[str, Callable[[StackConfig], None]], ...] = (
    ("aws", _network),
    ("nodeGroups", _nodes),
    ("gateway", _gateway),
    ("gateway", _edge),
    ("monitoring", _monitoring),
)


def _problems(section: str, error: Exception) -> list[str]:
    if isinstance(error, StackConfigError):
        return list(error.problems)
    message = str(error)
    if _KEYED.match(message):
        return [f"{FLEET_KEY}.{message}"]
    return [f"{FLEET_KEY}.{section}: the {section} cannot be planned from these settings: {message}"]


def plan_problems(stack: StackConfig) -> list[str]:
    """What the planners refuse in the stack, one line per problem: `<key>: <what is wrong; what is allowed>`."""
    settings: FleetSettings = stack.settings
    problems: list[str] = []
    problems += monitoring_problems(settings, stack.may_hold_secret(alertmanager.SECRETS_KEY))
    for section, planner in PLANNERS:
        try:
            planner(stack)
        except (StackConfigError, ValueError) as error:
            problems += _problems(section, error)
    return problems


def check_plans(stack: StackConfig) -> None:
    """Raise the stack's plan problems as one StackConfigError naming the stack file."""
    problems = plan_problems(stack)
    if problems:
        raise StackConfigError(stack.path.name, problems)
