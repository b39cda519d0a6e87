"""DNS records (single gateway and Route 53 failover) and the gateway certificate in every TLS mode, under mocks."""

from __future__ import annotations

import pulumi
import pytest
from aws_mocks import ZONE_ID, AwsMocks, deploy, plain, stack_settings

from components.dns import Dns, DnsArgs
from components.tls import GatewayCertificate, GatewayCertificateArgs
from fleet.plans.dns import dns_plan
from fleet.plans.tls import certificate_plan
from fleet.stack_file import StackConfigError

RECORD = "aws:route53/record:Record"
HEALTH = "aws:route53/healthCheck:HealthCheck"
IPS = ["198.51.100.10", "198.51.100.20"]
INSTANCES = ["i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2"]


def build_dns(settings, count, stack="prod", mocks=None):
    def build():
        dns = Dns(
            "dns",
            DnsArgs(plan=dns_plan(settings, stack), gateway_public_ips=IPS[:count], gateway_instance_ids=INSTANCES[:count]),
        )
        return {"fqdn": dns.fqdn, "url": dns.url, "zone_id": dns.zone_id}

    return deploy(build, stack=stack, mocks=mocks)


def test_single_gateway_gets_one_a_record_in_the_looked_up_zone():
    result = build_dns(stack_settings("staging"), 1, stack="staging")
    (record,) = result.of_type(RECORD)
    inputs = plain(record.inputs)
    assert inputs["name"] == "llm-staging.example.com" and inputs["type"] == "A"
    assert inputs["records"] == [IPS[0]] and inputs["zoneId"] == ZONE_ID and inputs["ttl"] == 60
    assert not inputs.get("failoverRoutingPolicies") and not result.of_type(HEALTH)
    assert result.invoked("aws:route53/getZone:getZone")[0]["name"] == "example.com"
    assert result.values == {"fqdn": "llm-staging.example.com", "url": "https://llm-staging.example.com", "zone_id": ZONE_ID}


def test_high_availability_fails_over_between_two_health_checked_gateways():
    result = build_dns(stack_settings("prod"), 2)
    checks = {r.name: plain(r.inputs) for r in result.of_type(HEALTH)}
    assert set(checks) == {"dns-primary-health", "dns-secondary-health"}
    for name, ip, instance in zip(("dns-primary-health", "dns-secondary-health"), IPS, INSTANCES):
        check = checks[name]
        assert check["type"] == "HTTPS" and check["resourcePath"] == "/health" and check["port"] == 443
        assert check["ipAddress"] == ip and check["fqdn"] == "llm.example.com" and check["enableSni"] is True
        assert check["tags"]["instance"] == instance and check["tags"]["component"] == "dns"
    records = {plain(r.inputs)["failoverRoutingPolicies"][0]["type"]: plain(r.inputs) for r in result.of_type(RECORD)}
    assert set(records) == {"PRIMARY", "SECONDARY"}
    assert records["PRIMARY"]["records"] == [IPS[0]] and records["SECONDARY"]["records"] == [IPS[1]]
    assert records["PRIMARY"]["setIdentifier"] != records["SECONDARY"]["setIdentifier"]
    checked = {records[k]["healthCheckId"] for k in records}
    assert len(checked) == 2 and all(c.startswith("hc-") for c in checked)
    assert all(r["name"] == "llm.example.com" and r["zoneId"] == ZONE_ID for r in records.values())


def test_high_availability_needs_two_gateways():
    with pytest.raises(Exception, match="Dns needs 2 gateway host"):
        build_dns(stack_settings("prod"), 1)


def test_without_a_domain_nothing_is_created_and_clients_use_the_gateway_address():
    settings = stack_settings("staging", {"gateway.domain": None, "gateway.hostedZone": None})
    result = build_dns(settings, 1, stack="staging")
    assert not [r for r in result.resources if r.custom] and not result.invoked("aws:route53/getZone:getZone")
    assert result.values == {"fqdn": IPS[0], "url": f"https://{IPS[0]}", "zone_id": None}


def test_a_domain_outside_its_zone_is_a_config_error_naming_the_key():
    with pytest.raises(StackConfigError, match=r"gateway.domain: is not inside the hosted zone example.com.*got \"llm.example.org\""):
        stack_settings("staging", {"gateway.domain": "llm.example.org"})


def test_zone_by_id_and_a_non_default_port_in_the_url():
    settings = stack_settings("staging", {"gateway.hostedZone": ZONE_ID, "gateway.httpsPort": 8443})
    result = build_dns(settings, 1, stack="staging")
    assert result.invoked("aws:route53/getZone:getZone")[0]["zoneId"] == ZONE_ID
    assert result.values["url"] == "https://llm-staging.example.com:8443"
    outside = stack_settings("staging", {"gateway.hostedZone": "Z0OTHERZONE999", "gateway.domain": "llm.example.com"})
    with pytest.raises(Exception, match="is not inside the hosted zone other.net"):
        build_dns(outside, 1, stack="staging", mocks=AwsMocks(zones={"other.net": "Z0OTHERZONE999"}))


def build_cert(settings, *, stack="staging", zone=None, cert=None, key=None):
    def build():
        certificate = GatewayCertificate(
            "cert",
            GatewayCertificateArgs(
                plan=certificate_plan(settings, stack),
                zone_id=zone,
                provided_cert=pulumi.Output.secret(cert) if cert else None,
                provided_key=pulumi.Output.secret(key) if key else None,
            ),
        )
        box["certificate"] = certificate
        if certificate.certificate_pem is None:
            return {}
        return {"cert": certificate.certificate_pem, "key": certificate.private_key_pem}

    box: dict = {}
    return deploy(build, stack=stack), box["certificate"]


def test_self_signed_certificate_covers_the_domain_and_localhost_and_stays_secret():
    result, _ = build_cert(stack_settings("staging"))
    key = plain(result.one("tls:index/privateKey:PrivateKey").inputs)
    assert key == {"algorithm": "ECDSA", "ecdsaCurve": "P256"}
    cert = plain(result.one("tls:index/selfSignedCert:SelfSignedCert").inputs)
    assert cert["dnsNames"] == ["llm-staging.example.com", "localhost"]
    assert cert["subject"]["commonName"] == "llm-staging.example.com"
    assert "server_auth" in cert["allowedUses"] and cert["earlyRenewalHours"] < cert["validityPeriodHours"]
    assert result.values["cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in result.values["key"]
    assert result.secret == {"cert": True, "key": True}


def test_provided_certificate_comes_from_secret_config_only():
    settings = stack_settings("staging", {"gateway.tls.mode": "provided"})
    with pytest.raises(StackConfigError, match=r"ollama-fleet:tlsCertificate and ollama-fleet:tlsPrivateKey"):
        build_cert(settings)
    pem = "-----BEGIN CERTIFICATE-----\nprovided\n-----END CERTIFICATE-----\n"
    key = "-----BEGIN PRIVATE KEY-----\nprovided\n-----END PRIVATE KEY-----\n"
    result, _ = build_cert(settings, cert=pem, key=key)
    assert result.values == {"cert": pem, "key": key} and result.secret == {"cert": True, "key": True}
    assert not [r for r in result.resources if r.custom], "nothing is created for a provided certificate"
    with pytest.raises(Exception, match=r"ollama-fleet:tlsCertificate: expected a PEM block"):
        build_cert(settings, cert="not a certificate", key=key)


def test_acme_uses_a_dns01_challenge_in_the_route53_zone():
    settings = stack_settings("prod")
    result, _ = build_cert(settings, stack="prod", zone=ZONE_ID)
    provider = plain(result.one("pulumi:providers:acme").inputs)
    assert provider["serverUrl"] == "https://acme-v02.api.letsencrypt.org/directory"
    registration = result.one("acme:index/registration:Registration")
    assert plain(registration.inputs)["emailAddress"] == "platform@example.com"
    certificate = result.one("acme:index/certificate:Certificate")
    inputs = plain(certificate.inputs)
    assert inputs["commonName"] == "llm.example.com" and inputs["keyType"] == "P256"
    (challenge,) = inputs["dnsChallenges"]
    assert challenge["provider"] == "route53"
    assert challenge["config"] == {"AWS_HOSTED_ZONE_ID": ZONE_ID, "AWS_REGION": "us-east-1"}
    assert certificate.provider and certificate.provider.startswith(result.one("pulumi:providers:acme").urn)
    # nginx gets the leaf followed by the issuer, and the key, both secret.
    outputs = certificate.outputs
    assert result.values["cert"] == outputs["certificatePem"] + outputs["issuerPem"]
    assert result.values["key"] == outputs["privateKeyPem"]
    assert result.secret == {"cert": True, "key": True}


def test_acme_without_a_route53_zone_is_a_config_error():
    with pytest.raises(StackConfigError, match=r"gateway.tls.mode: `acme` proves the domain with a DNS-01 challenge"):
        build_cert(stack_settings("prod"), stack="prod", zone=None)


def test_tls_off_creates_nothing():
    settings = stack_settings("dev", {"gateway.tls.mode": "off"})
    result, certificate = build_cert(settings, stack="dev")
    assert certificate.certificate_pem is None and certificate.private_key_pem is None
    assert not [r for r in result.resources if r.custom]
