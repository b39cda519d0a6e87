"""The fleet's secrets: an API key per client, the admin key, Grafana's and Prometheus' passwords, each from secret
config where the stack sets it and generated otherwise, and the checks of the configured API keys.
components/secrets.py wires exactly this plan.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleet.config import PROJECT, FleetSettings

API_KEYS_KEY = f"{PROJECT}:apiKeys"
CLIENT_KEY_LENGTH = 40
ADMIN_KEY_LENGTH = 48
PASSWORD_LENGTH = 32
# The salt of Prometheus' bcrypt hash, kept in the state: the same password renders the same web config.
SALT_BYTES = 16


@dataclass(frozen=True)
class Generated:
    """A generated secret: letters and digits only (keys travel in HTTP headers and nginx `map` files unquoted)."""

    resource: str  # suffix of the resource name: `<component>-<resource>`
    length: int
    special: bool = False


@dataclass(frozen=True)
class SecretsPlan:
    """What is generated: a key for every client (used where `ollama-fleet:apiKeys` names none for it), and the
    admin key and the passwords, used where their secret config is not set."""

    clients: tuple[str, ...]
    client_keys: tuple[Generated, ...]  # in the order of `clients`
    admin_key: Generated
    grafana_password: Generated
    prometheus_password: Generated
    prometheus_salt: str  # suffix of the salt's resource name
    salt_bytes: int = SALT_BYTES

    def api_keys(self, given_json: str | None, generated: Sequence[str]) -> dict[str, str]:
        """Client name -> key: the configured key (`ollama-fleet:apiKeys`, a JSON object), else the generated one.
        Refuses clients that gateway.clients does not list, and one key shared by two clients."""
        given: Mapping[str, str] = (json.loads(given_json) if given_json is not None else None) or {}
        unknown = sorted(set(given) - set(self.clients))
        if unknown:
            raise ValueError(f"{API_KEYS_KEY} names clients that gateway.clients does not list: {', '.join(unknown)}")
        keys = {client: given.get(client) or generated[i] for i, client in enumerate(self.clients)}
        if len(set(keys.values())) != len(keys):
            raise ValueError(f"{API_KEYS_KEY}: two clients share one key; every client needs its own")
        return keys


def secrets_plan(settings: FleetSettings) -> SecretsPlan:
    clients = tuple(client.name for client in settings.gateway.clients)
    return SecretsPlan(
        clients=clients,
        client_keys=tuple(Generated(f"key-{client}", CLIENT_KEY_LENGTH) for client in clients),
        admin_key=Generated("admin-key", ADMIN_KEY_LENGTH),
        grafana_password=Generated("grafana-admin", PASSWORD_LENGTH),
        prometheus_password=Generated("prometheus", PASSWORD_LENGTH),
        prometheus_salt="prometheus-salt",
    )
