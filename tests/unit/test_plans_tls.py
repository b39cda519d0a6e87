"""The certificate plan without Pulumi: the names a self-signed certificate covers, the ACME order, the provided
certificate's secret config keys and PEM checks, and the refusals, each naming the stack file and the key."""

from __future__ import annotations

import pytest
from aws_mocks import stack_settings

from fleet.plans.tls import (
    ACME_MIN_DAYS_REMAINING,
    CERT_KEY,
    KEY_KEY,
    RENEW_BEFORE_HOURS,
    SELF_SIGNED_VALIDITY_HOURS,
    Acme,
    certificate_plan,
    full_chain,
    san_names,
)
from fleet.stack_file import StackConfigError

CERT = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\ny\n-----END EC PRIVATE KEY-----\n"


def test_a_self_signed_certificate_covers_the_api_name_and_localhost():
    plan = certificate_plan(stack_settings("staging"), "staging")
    assert plan.mode == "self-signed" and plan.acme is None
    cert = plan.self_signed
    assert cert.common_name == "llm-staging.example.com"
    assert cert.dns_names == ("llm-staging.example.com", "localhost") and cert.ip_addresses == ("127.0.0.1",)
    assert cert.allowed_uses == ("digital_signature", "server_auth") and cert.organization == "ollama-fleet"
    # re-issued by `pulumi up` a month before it expires
    assert (cert.validity_period_hours, cert.early_renewal_hours) == (SELF_SIGNED_VALIDITY_HOURS, RENEW_BEFORE_HOURS)
    assert cert.early_renewal_hours < cert.validity_period_hours
    # on the local Docker host without a domain the gateway answers as localhost
    dev = certificate_plan(stack_settings("dev"), "dev")
    assert dev.self_signed.dns_names == ("localhost",) and dev.self_signed.common_name == "localhost"


def test_san_names_are_normalised_and_never_repeat_localhost():
    assert san_names("LLM.example.com.") == ["llm.example.com", "localhost"]
    assert san_names("localhost") == ["localhost"]
    assert san_names(None) == ["localhost"]


def test_acme_orders_the_api_name_with_a_route53_challenge_in_the_stack_region():
    plan = certificate_plan(stack_settings("prod"), "prod")
    assert plan.mode == "acme" and plan.self_signed is None
    assert plan.acme == Acme(
        server_url="https://acme-v02.api.letsencrypt.org/directory",
        email="platform@example.com",
        common_name="llm.example.com",
        region="us-east-1",
    )
    assert (plan.acme.key_type, plan.acme.challenge_provider) == ("P256", "route53")
    assert plan.acme.min_days_remaining == ACME_MIN_DAYS_REMAINING == 30
    plan.check_zone(True)
    with pytest.raises(StackConfigError, match=r"(?s)Pulumi.prod.yaml.*gateway.tls.mode: `acme` proves the domain with a DNS-01"):
        plan.check_zone(False)


def test_a_provided_certificate_needs_both_secret_config_keys_and_pem_blocks():
    plan = certificate_plan(stack_settings("staging", {"gateway.tls.mode": "provided"}), "staging")
    assert plan.mode == "provided" and plan.self_signed is None and plan.acme is None
    plan.check_provided(True, True)
    with pytest.raises(StackConfigError, match=rf"{CERT_KEY} and {KEY_KEY} \(pulumi config set --secret {CERT_KEY} < file.pem\)"):
        plan.check_provided(False, False)
    with pytest.raises(StackConfigError, match=rf"needs the secret config {KEY_KEY} \(pulumi config set --secret {KEY_KEY}"):
        plan.check_provided(True, False)
    assert plan.provided_certificate(CERT) == CERT and plan.provided_key(KEY) == KEY
    with pytest.raises(StackConfigError, match=rf"(?s)Pulumi.staging.yaml.*{CERT_KEY}: expected a PEM block containing 'BEGIN CERTIFICATE'"):
        plan.provided_certificate(KEY)
    with pytest.raises(StackConfigError, match=rf"{KEY_KEY}: expected a PEM block containing 'PRIVATE KEY'"):
        plan.provided_key("")


def test_tls_off_plans_no_certificate():
    plan = certificate_plan(stack_settings("dev", {"gateway.tls": {"mode": "off"}}), "dev")
    assert (plan.mode, plan.self_signed, plan.acme) == ("off", None, None)


def test_nginx_gets_the_leaf_then_the_issuer():
    assert full_chain("leaf\n", "issuer\n") == "leaf\nissuer\n"
    assert full_chain("leaf\n", None) == "leaf\n"
