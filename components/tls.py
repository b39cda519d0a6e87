"""The gateway's TLS certificate and key, as `fleet.plans.tls` plans them by `gateway.tls.mode` (the modes are
told there); both reach nginx as secret Outputs only.

- `self-signed`: a key and a certificate from pulumi-tls.
- `acme`: a certificate through the pulumiverse-acme provider, with a DNS-01 challenge in the Route 53 zone.
- `provided`: the secret config values, checked to be PEM blocks.
- `off`: no certificate.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls
import pulumiverse_acme as acme

from fleet.config import PROJECT
from fleet.plans.tls import Acme, CertificatePlan, SelfSigned, full_chain

TOKEN = f"{PROJECT}:index:GatewayCertificate"


@dataclass
class GatewayCertificateArgs:
    plan: CertificatePlan  # fleet.plans.tls.certificate_plan(settings, stack)
    # The Route 53 zone of the `acme` mode's DNS-01 challenge.
    zone_id: pulumi.Input[str] | None = None
    # The `provided` mode's secret config values (None where the stack sets none).
    provided_cert: pulumi.Input[str] | None = None
    provided_key: pulumi.Input[str] | None = None


class GatewayCertificate(pulumi.ComponentResource):
    certificate_pem: pulumi.Output[str] | None
    private_key_pem: pulumi.Output[str] | None

    def __init__(self, name: str, args: GatewayCertificateArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        plan = args.plan
        certificate: pulumi.Input[str] | None = None
        key: pulumi.Input[str] | None = None
        if plan.self_signed is not None:
            certificate, key = self._self_signed(name, plan.self_signed)
        elif plan.acme is not None:
            plan.check_zone(args.zone_id is not None)
            certificate, key = self._acme(name, plan.acme, args.zone_id)
        elif plan.mode == "provided":
            plan.check_provided(args.provided_cert is not None, args.provided_key is not None)
            certificate = pulumi.Output.from_input(args.provided_cert).apply(plan.provided_certificate)
            key = pulumi.Output.from_input(args.provided_key).apply(plan.provided_key)
        self.certificate_pem = pulumi.Output.secret(certificate) if certificate is not None else None
        self.private_key_pem = pulumi.Output.secret(key) if key is not None else None
        self.register_outputs({"mode": plan.mode})

    def _self_signed(self, name: str, plan: SelfSigned):
        child = pulumi.ResourceOptions(parent=self)
        key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        cert = tls.SelfSignedCert(
            f"{name}-self-signed",
            private_key_pem=key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(common_name=plan.common_name, organization=plan.organization),
            dns_names=list(plan.dns_names),
            ip_addresses=list(plan.ip_addresses),
            validity_period_hours=plan.validity_period_hours,
            early_renewal_hours=plan.early_renewal_hours,
            allowed_uses=list(plan.allowed_uses),
            opts=child,
        )
        return cert.cert_pem, key.private_key_pem

    def _acme(self, name: str, plan: Acme, zone_id: pulumi.Input[str]):
        child = pulumi.ResourceOptions(parent=self)
        provider = acme.Provider(f"{name}-acme", server_url=plan.server_url, opts=child)
        with_provider = pulumi.ResourceOptions(parent=self, provider=provider)
        account_key = tls.PrivateKey(f"{name}-acme-account", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        registration = acme.Registration(
            f"{name}-acme-registration",
            account_key_pem=account_key.private_key_pem,
            email_address=plan.email,
            opts=with_provider,
        )
        certificate = acme.Certificate(
            f"{name}-acme-cert",
            account_key_pem=registration.account_key_pem,
            common_name=plan.common_name,
            key_type=plan.key_type,
            min_days_remaining=plan.min_days_remaining,
            dns_challenges=[
                acme.CertificateDnsChallengeArgs(
                    provider=plan.challenge_provider,
                    config={"AWS_HOSTED_ZONE_ID": zone_id, "AWS_REGION": plan.region},
                )
            ],
            opts=with_provider,
        )
        chain = pulumi.Output.all(certificate.certificate_pem, certificate.issuer_pem).apply(lambda parts: full_chain(*parts))
        return chain, certificate.private_key_pem
