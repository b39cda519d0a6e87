"""The secrets plan without Pulumi: what is generated and how long, and the configured API keys merged with the
generated ones (unknown clients and shared keys refused)."""

from __future__ import annotations

import json

import pytest
from aws_mocks import stack_settings

from fleet.plans.secrets import Generated, secrets_plan


def test_every_client_gets_a_generated_key_and_the_admin_key_and_passwords_their_lengths():
    plan = secrets_plan(stack_settings("prod"))
    assert plan.clients == ("search", "support-bot", "ci")
    assert plan.client_keys == tuple(Generated(f"key-{c}", 40) for c in plan.clients)
    assert plan.admin_key == Generated("admin-key", 48)
    assert plan.grafana_password == Generated("grafana-admin", 32) and plan.prometheus_password == Generated("prometheus", 32)
    # letters and digits only: keys travel unquoted in HTTP headers and nginx `map` files
    assert not any(g.special for g in (*plan.client_keys, plan.admin_key, plan.grafana_password, plan.prometheus_password))
    assert (plan.prometheus_salt, plan.salt_bytes) == ("prometheus-salt", 16)


def test_configured_keys_win_and_the_rest_are_generated():
    plan = secrets_plan(stack_settings("prod"))
    generated = ["g-search", "g-support", "g-ci"]
    assert plan.api_keys(None, generated) == {"search": "g-search", "support-bot": "g-support", "ci": "g-ci"}
    given = json.dumps({"ci": "configured-ci"})
    assert plan.api_keys(given, generated) == {"search": "g-search", "support-bot": "g-support", "ci": "configured-ci"}
    assert plan.api_keys("{}", generated) == plan.api_keys(None, generated)


def test_unknown_clients_and_shared_keys_are_refused():
    plan = secrets_plan(stack_settings("prod"))
    generated = ["g-search", "g-support", "g-ci"]
    with pytest.raises(ValueError, match=r"ollama-fleet:apiKeys names clients that gateway.clients does not list: ghost, x"):
        plan.api_keys(json.dumps({"x": "1", "ghost": "2", "ci": "3"}), generated)
    with pytest.raises(ValueError, match=r"ollama-fleet:apiKeys: two clients share one key"):
        plan.api_keys(json.dumps({"search": "same", "ci": "same"}), generated)
