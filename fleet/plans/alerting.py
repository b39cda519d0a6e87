"""The alert receivers' secrets: the secret config's JSON read into a mapping, and what a stack lacks when it
sets none although a receiver needs one. The values never reach a plain file: the stack stores them encrypted.
"""

from __future__ import annotations

import json

from fleet.config import FLEET_KEY, FleetSettings
from fleet.render.alertmanager import SECRETS_KEY, AlertingConfigError, needs_secret

# What each kind of receiver keeps in the secret config.
SECRET_OF_KIND = {"slack": "its incoming-webhook URL", "pagerduty": "its Events API v2 routing key", "webhook": "its URL"}


def receiver_secrets(secrets_json: str | None) -> dict[str, str]:
    """The receivers' secrets from the secret config's JSON object (values are strings)."""
    if not secrets_json:
        return {}
    try:
        value = json.loads(secrets_json)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise AlertingConfigError(f"{SECRETS_KEY} must be a JSON object mapping receiver names to strings")
    return value


def unset_secret_problems(settings: FleetSettings) -> list[str]:
    """With no `alertReceiverSecrets` in the stack: one problem per receiver that cannot work without its secret
    (none with monitoring off: no Alertmanager runs)."""
    if not settings.monitoring.enabled:
        return []
    problems = []
    for index, receiver in enumerate(settings.monitoring.alerting.receivers):
        if needs_secret(receiver):
            fix = f"pulumi config set --secret alertReceiverSecrets '{{\"{receiver.name}\": \"...\"}}'"
            other = " (or give the receiver its `url`, when the URL holds no token)" if receiver.kind == "webhook" else ""
            problems.append(
                f"{FLEET_KEY}.monitoring.alerting.receivers[{index}]: receiver {receiver.name!r} (kind {receiver.kind}) "
                f"needs {SECRET_OF_KIND[receiver.kind]} in the secret config {SECRETS_KEY}, which the stack does not "
                f"set; allowed: set it with `{fix}`{other}"
            )
    return problems
