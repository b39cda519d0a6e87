"""Alertmanager: receivers and routes from `monitoring.alerting`, and the rules that keep one failure to one page.

Routes: every alert carries a `severity` label (fleet.render.rules); each receiver listed under `critical` or
`warning` gets a route of its own (`continue: true`, so every listed receiver is notified). Alerts no receiver
takes end at `unrouted`, a receiver with no integration, which Alertmanager still shows in its UI and API.

Grouping is by alert name and node group: a group losing three nodes is one notification listing three.
Inhibition: while `OllamaNodeDown` fires for a node of a group, the symptoms it causes in the same group
(slow first tokens, a growing queue, failing requests: the survivors carry the load) stay quiet.

Receiver secrets (Slack webhook URL, PagerDuty routing key, SMTP password, a webhook URL with a token) come
from the secret config `ollama-fleet:alertReceiverSecrets`, so the rendered file is a secret as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from fleet.config import PROJECT, FleetSettings, Receiver

SECRETS_KEY = f"{PROJECT}:alertReceiverSecrets"
CONFIG_PATH = "/etc/alertmanager/alertmanager.yml"  # where the container reads the rendered file
UNROUTED = "unrouted"
GROUP_BY = ("alertname", "group")
NODE_DOWN_ALERT = "OllamaNodeDown"
# Alerts a dead node causes in its own group; all of them carry the `group` label.
NODE_DOWN_SYMPTOMS = ("OllamaTimeToFirstTokenHigh", "OllamaQueueGrowing", "OllamaErrorRatioHigh")
SEVERITIES = ("critical", "warning")


class AlertingConfigError(ValueError):
    """A receiver lacks its secret, or the secrets name receivers the stack does not define."""


def needs_secret(receiver: Receiver) -> bool:
    """Slack (its webhook URL), PagerDuty (its routing key) and a webhook without `url` cannot work without one."""
    return receiver.kind in ("slack", "pagerduty") or (receiver.kind == "webhook" and not receiver.url)


def placeholder_secrets(settings: FleetSettings) -> dict[str, str]:
    """Stand-ins for the receivers' secrets in a reviewable render (`fleet render`): an `.invalid` URL where
    a URL goes, a marked string elsewhere; the real values exist only at deployment."""
    found = {}
    for receiver in settings.monitoring.alerting.receivers:
        if receiver.kind in ("slack", "webhook") and needs_secret(receiver):
            found[receiver.name] = f"https://secret.invalid/{SECRETS_KEY.replace(':', '/')}/{receiver.name}"
        elif receiver.kind == "pagerduty" or (receiver.kind == "email" and receiver.auth_username):
            found[receiver.name] = f"<secret {SECRETS_KEY}[{receiver.name}]>"
    return found


def check_secrets(settings: FleetSettings, secrets: Mapping[str, str]) -> None:
    """Every receiver that needs a secret has one, and every secret belongs to a receiver."""
    receivers = settings.monitoring.alerting.receivers
    known = {r.name for r in receivers}
    problems = []
    missing = [r.name for r in receivers if needs_secret(r) and not secrets.get(r.name)]
    if missing:
        problems.append(
            f"{SECRETS_KEY} has no secret for receiver(s) {', '.join(missing)} "
            "(slack: the webhook URL, pagerduty: the routing key, webhook without url: the URL)"
        )
    unknown = sorted(set(secrets) - known)
    if unknown:
        problems.append(
            f"{SECRETS_KEY} names receivers that monitoring.alerting.receivers does not define: {', '.join(unknown)}"
        )
    if problems:
        raise AlertingConfigError("; ".join(problems))


def _integration(receiver: Receiver, secret: str | None) -> tuple[str, dict[str, Any]]:
    """(Alertmanager's `<kind>_configs` key, one entry) for a receiver."""
    common = {"send_resolved": receiver.send_resolved}
    if receiver.kind == "webhook":
        return "webhook_configs", {"url": receiver.url or secret, **common}
    if receiver.kind == "slack":
        entry = {
            "api_url": secret,
            "title": '[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} ({{ .CommonLabels.group }})',
            "text": "{{ range .Alerts }}{{ .Annotations.summary }}\n{{ end }}",
            **common,
        }
        if receiver.channel:
            entry["channel"] = receiver.channel
        return "slack_configs", entry
    if receiver.kind == "pagerduty":
        return "pagerduty_configs", {"routing_key": secret, **common}
    entry = {
        "to": receiver.to,
        "from": receiver.from_address,
        "smarthost": receiver.smarthost,
        "require_tls": receiver.require_tls,
        **common,
    }
    if receiver.auth_username:
        entry["auth_username"] = receiver.auth_username
    if secret:
        entry["auth_password"] = secret
    return "email_configs", entry


def alertmanager_config(settings: FleetSettings, secrets: Mapping[str, str] | None = None) -> dict[str, Any]:
    """alertmanager.yml as a document; `secrets` maps receiver names to their secret (see `check_secrets`)."""
    secrets = dict(secrets or {})
    check_secrets(settings, secrets)
    alerting = settings.monitoring.alerting
    routes = [
        {"receiver": receiver.name, "matchers": [f'severity="{severity}"'], "continue": True}
        for severity in SEVERITIES
        for receiver in alerting.receivers_for(severity)
    ]
    receivers: list[dict[str, Any]] = [{"name": UNROUTED}]
    for receiver in alerting.receivers:
        key, entry = _integration(receiver, secrets.get(receiver.name))
        receivers.append({"name": receiver.name, key: [entry]})
    route: dict[str, Any] = {
        "receiver": UNROUTED,
        "group_by": list(GROUP_BY),
        "group_wait": alerting.group_wait,
        "group_interval": alerting.group_interval,
        "repeat_interval": alerting.repeat_interval,
    }
    if routes:
        route["routes"] = routes
    return {
        "route": route,
        "inhibit_rules": [
            {
                "source_matchers": [f'alertname="{NODE_DOWN_ALERT}"'],
                "target_matchers": [f'alertname=~"{"|".join(NODE_DOWN_SYMPTOMS)}"'],
                "equal": ["group"],
            }
        ],
        "receivers": receivers,
    }


def render_alertmanager(settings: FleetSettings, secrets: Mapping[str, str] | None = None) -> str:
    """alertmanager.yml (checked by `amtool check-config`). Holds receiver secrets: ship it as a secret."""
    header = "# Alertmanager of ollama-fleet, rendered by fleet.render.alertmanager. Do not edit by hand.\n"
    return header + yaml.safe_dump(
        alertmanager_config(settings, secrets), sort_keys=False, default_flow_style=False, width=1000
    )


def alertmanager_args(
    *, config_file: str, storage_path: str, listen_address: str, external_url: str | None = None
) -> list[str]:
    """Flags of the Alertmanager server. One instance per fleet: clustering (gossip on port 9094 of every
    interface by default) is switched off."""
    args = [
        f"--config.file={config_file}",
        f"--storage.path={storage_path}",
        f"--web.listen-address={listen_address}",
        "--cluster.listen-address=",
    ]
    if external_url:
        args.append(f"--web.external-url={external_url}")
    return args
