"""The DNS plan without Pulumi: which zone is looked up and how, the records and their TTL, the failover health
checks by TLS mode, the tags, and the refusals (host count, a domain outside the looked-up zone)."""

from __future__ import annotations

import pytest
from aws_mocks import ZONE_ID, stack_settings

from fleet.plans.dns import HEALTH_FAILURES, HEALTH_INTERVAL_S, RECORD_TTL, ZoneLookup, dns_plan
from fleet.stack_file import StackConfigError


def test_one_gateway_host_gets_one_a_record_in_the_named_zone():
    plan = dns_plan(stack_settings("staging"), "staging")
    assert plan.fqdn == "llm-staging.example.com" and plan.gateway_hosts == 1 and not plan.high_availability
    assert plan.zone == ZoneLookup(reference="example.com", by_id=False)
    (record,) = plan.records
    assert (record.resource, record.host, record.name, record.type, record.ttl) == (
        "gateway", 0, "llm-staging.example.com", "A", RECORD_TTL
    )
    assert record.failover is None and record.set_identifier is None and record.health_check is None
    assert plan.client_url.at(plan.fqdn) == "https://llm-staging.example.com"
    assert plan.stack_file == "Pulumi.staging.yaml"


def test_high_availability_plans_health_checked_primary_and_secondary():
    plan = dns_plan(stack_settings("prod"), "prod")
    assert plan.gateway_hosts == 2 and plan.high_availability
    primary, secondary = plan.records
    assert (primary.resource, primary.host, primary.failover) == ("primary", 0, "PRIMARY")
    assert (secondary.resource, secondary.host, secondary.failover) == ("secondary", 1, "SECONDARY")
    assert primary.set_identifier == "llm.example.com-primary" != secondary.set_identifier
    for record in plan.records:
        check = record.health_check
        assert check is not None and check.resource == f"{record.resource}-health"
        assert (check.type, check.port, check.resource_path, check.enable_sni) == ("HTTPS", 443, "/health", True)
        assert check.fqdn == record.name == "llm.example.com"
        # about 1.5 minutes to fail over, within the record's TTL afterwards
        assert (check.request_interval, check.failure_threshold) == (HEALTH_INTERVAL_S, HEALTH_FAILURES) == (30, 3)
    tags = plan.tags_of("ollama-dns-primary-health")
    assert tags["component"] == "dns" and tags["stack"] == "prod" and tags["Name"] == "ollama-dns-primary-health"


def test_with_tls_off_the_health_checks_ask_plain_http_on_the_http_port():
    plan = dns_plan(stack_settings("prod", {"gateway.tls": {"mode": "off"}, "gateway.httpPort": 8080}), "prod")
    for record in plan.records:
        check = record.health_check
        assert (check.type, check.port, check.enable_sni) == ("HTTP", 8080, False)
    assert plan.client_url.at("llm.example.com") == "http://llm.example.com:8080"


def test_a_zone_given_by_id_is_looked_up_by_id():
    plan = dns_plan(stack_settings("staging", {"gateway.hostedZone": ZONE_ID, "gateway.domain": "llm.example.com"}), "staging")
    assert plan.zone == ZoneLookup(reference=ZONE_ID, by_id=True)
    assert plan.fqdn == "llm.example.com" and plan.records[0].name == "llm.example.com"


def test_the_looked_up_zone_must_hold_the_domain():
    plan = dns_plan(stack_settings("staging", {"gateway.hostedZone": ZONE_ID}), "staging")
    assert plan.zone_id_of("example.com.", ZONE_ID) == ZONE_ID
    assert plan.zone_id_of("llm-staging.example.com", ZONE_ID) == ZONE_ID  # the zone may be the name itself
    with pytest.raises(StackConfigError, match=r"(?s)Pulumi.staging.yaml.*gateway.domain: llm-staging.example.com is not "
                       r"inside the hosted zone other.net \(Z0EXAMPLE12345\)"):
        plan.zone_id_of("other.net", ZONE_ID)


def test_the_hosts_given_must_be_the_planned_count():
    plan = dns_plan(stack_settings("prod"), "prod")
    plan.check_hosts(2, 2)
    with pytest.raises(ValueError, match=r"Dns needs 2 gateway host\(s\) \(gateway.highAvailability=True\), got 1 "
                       r"address\(es\) and 2 instance id\(s\)"):
        plan.check_hosts(1, 2)


def test_without_a_domain_nothing_is_planned():
    plan = dns_plan(stack_settings("staging", {"gateway.domain": None, "gateway.hostedZone": None}), "staging")
    assert plan.fqdn is None and plan.zone is None and plan.records == ()
    assert plan.client_url.at("198.51.100.10") == "https://198.51.100.10"
