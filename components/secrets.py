"""API keys, the admin key and the Grafana and Prometheus passwords: from secret config where set, generated
otherwise, as `fleet.plans.secrets` plans them."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_random as random

from fleet.config import PROJECT
from fleet.plans.secrets import Generated, SecretsPlan

TOKEN = f"{PROJECT}:index:Secrets"


@dataclass
class SecretsArgs:
    plan: SecretsPlan  # fleet.plans.secrets.secrets_plan(settings)
    # Values read from secret config (`pulumi config set --secret ...`); None where the stack sets none.
    api_keys_json: pulumi.Input[str] | None = None
    admin_key: pulumi.Input[str] | None = None
    grafana_password: pulumi.Input[str] | None = None
    prometheus_password: pulumi.Input[str] | None = None


class Secrets(pulumi.ComponentResource):
    """Every secret the fleet needs, each a secret Output end to end."""

    api_keys: pulumi.Output[dict[str, str]]
    admin_key: pulumi.Output[str]
    grafana_password: pulumi.Output[str]
    prometheus_password: pulumi.Output[str]
    prometheus_salt: pulumi.Output[str]

    def __init__(self, name: str, args: SecretsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        plan = args.plan
        generated = [self._generated(name, secret) for secret in plan.client_keys]
        self.api_keys = pulumi.Output.secret(
            pulumi.Output.all(args.api_keys_json, *generated).apply(lambda values: plan.api_keys(values[0], values[1:]))
        )
        self.admin_key = self._given_or_generated(name, args.admin_key, plan.admin_key)
        self.grafana_password = self._given_or_generated(name, args.grafana_password, plan.grafana_password)
        self.prometheus_password = self._given_or_generated(name, args.prometheus_password, plan.prometheus_password)
        self.prometheus_salt = random.RandomId(
            f"{name}-{plan.prometheus_salt}", byte_length=plan.salt_bytes, opts=pulumi.ResourceOptions(parent=self)
        ).hex
        self.register_outputs({})

    def _given_or_generated(self, name: str, given: pulumi.Input[str] | None, secret: Generated) -> pulumi.Output[str]:
        return pulumi.Output.secret(given if given is not None else self._generated(name, secret))

    def _generated(self, name: str, secret: Generated) -> pulumi.Output[str]:
        password = random.RandomPassword(
            f"{name}-{secret.resource}", length=secret.length, special=secret.special, opts=pulumi.ResourceOptions(parent=self)
        )
        return password.result
