"""API keys, the admin key and the Grafana password: from secret config where set, generated otherwise."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_random as random

from fleet.config import PROJECT, FleetSettings

TOKEN = f"{PROJECT}:index:Secrets"


@dataclass
class SecretsArgs:
    settings: FleetSettings
    # Values read from secret config (`pulumi config set --secret ...`); None where the stack sets none.
    api_keys_json: pulumi.Output[str] | None = None
    admin_key: pulumi.Output[str] | None = None
    grafana_password: pulumi.Output[str] | None = None
    prometheus_password: pulumi.Output[str] | None = None


def _generated(name: str, parent: pulumi.Resource, length: int = 40) -> pulumi.Output[str]:
    # Letters and digits only: keys travel in HTTP headers and nginx `map` files unquoted.
    password = random.RandomPassword(
        name, length=length, special=False, opts=pulumi.ResourceOptions(parent=parent)
    )
    return password.result


class Secrets(pulumi.ComponentResource):
    """Every secret the fleet needs, each a secret Output end to end."""

    api_keys: pulumi.Output[dict[str, str]]
    admin_key: pulumi.Output[str]
    grafana_password: pulumi.Output[str]

    def __init__(self, name: str, args: SecretsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        clients = [c.name for c in args.settings.gateway.clients]
        configured = args.api_keys_json.apply(json.loads) if args.api_keys_json is not None else pulumi.Output.from_input({})

        generated = {client: _generated(f"{name}-key-{client}", self) for client in clients}

        def merge(values: list) -> dict[str, str]:
            given: dict[str, str] = values[0] or {}
            unknown = sorted(set(given) - set(clients))
            if unknown:
                raise ValueError(
                    f"{PROJECT}:apiKeys names clients that gateway.clients does not list: {', '.join(unknown)}"
                )
            keys = {client: given.get(client) or values[i + 1] for i, client in enumerate(clients)}
            if len(set(keys.values())) != len(keys):
                raise ValueError(f"{PROJECT}:apiKeys: two clients share one key; every client needs its own")
            return keys

        self.api_keys = pulumi.Output.secret(
            pulumi.Output.all(configured, *[generated[c] for c in clients]).apply(merge)
        )
        self.admin_key = pulumi.Output.secret(args.admin_key or _generated(f"{name}-admin-key", self, 48))
        self.grafana_password = pulumi.Output.secret(
            args.grafana_password or _generated(f"{name}-grafana-admin", self, 32)
        )
        self.prometheus_password = pulumi.Output.secret(
            args.prometheus_password or _generated(f"{name}-prometheus", self, 32)
        )
        # The salt of Prometheus' bcrypt hash, kept in the state: the same password renders the same web config.
        self.prometheus_salt = random.RandomId(
            f"{name}-prometheus-salt", byte_length=16, opts=pulumi.ResourceOptions(parent=self)
        ).hex
        self.register_outputs({})
