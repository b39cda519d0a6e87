"""Secrets under mocks: a random key per client and for every secret the stack does not set, configured values
where it does, each a secret Output."""

from __future__ import annotations

import json

import pulumi
import pytest
from aws_mocks import deploy, plain, stack_settings

from components.secrets import Secrets, SecretsArgs
from fleet.plans.secrets import secrets_plan

PASSWORD = "random:index/randomPassword:RandomPassword"


def build(settings, **given):
    def program():
        secrets = Secrets(
            "s",
            SecretsArgs(secrets_plan(settings), **{k: pulumi.Output.secret(v) for k, v in given.items()}),
        )
        return {
            "keys": secrets.api_keys,
            "admin": secrets.admin_key,
            "grafana": secrets.grafana_password,
            "prometheus": secrets.prometheus_password,
        }

    return deploy(program)


def test_everything_unset_is_generated_letters_and_digits_only():
    result = build(stack_settings("prod"))
    passwords = {r.name: plain(r.inputs) for r in result.of_type(PASSWORD)}
    assert set(passwords) == {"s-key-search", "s-key-support-bot", "s-key-ci", "s-admin-key", "s-grafana-admin", "s-prometheus"}
    assert passwords["s-admin-key"]["length"] == 48 and passwords["s-key-ci"]["length"] == 40
    assert all(p["special"] is False for p in passwords.values())
    assert result.one("random:index/randomId:RandomId").name == "s-prometheus-salt"
    keys = result.values["keys"]
    assert list(keys) == ["search", "support-bot", "ci"] and len(set(keys.values())) == 3
    assert result.secret == {"keys": True, "admin": True, "grafana": True, "prometheus": True}


def test_configured_values_are_used_and_stay_secret():
    result = build(
        stack_settings("prod"), api_keys_json=json.dumps({"ci": "configured-ci-key"}), admin_key="configured-admin"
    )
    names = {r.name for r in result.of_type(PASSWORD)}
    assert "s-admin-key" not in names and "s-key-ci" in names  # a client key is generated all the same, unused
    assert result.values["keys"]["ci"] == "configured-ci-key" and result.values["admin"] == "configured-admin"
    assert result.secret["keys"] and result.secret["admin"]


def test_a_key_for_an_unknown_client_fails_the_run():
    with pytest.raises(Exception, match="names clients that gateway.clients does not list: ghost"):
        build(stack_settings("prod"), api_keys_json=json.dumps({"ghost": "k"}))
