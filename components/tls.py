"""The gateway's TLS certificate and key, by `gateway.tls.mode`; both reach nginx as secret Outputs only.

- `self-signed`: an ECDSA P-256 key and a certificate for the domain and localhost from pulumi-tls (dev, staging).
- `acme`: a real certificate from an ACME CA (Let's Encrypt by default) through the pulumiverse-acme provider,
  proven with a DNS-01 challenge in the stack's Route 53 zone; renewed by `pulumi up` within 30 days of expiry.
- `provided`: the secret config keys `ollama-fleet:tlsCertificate` (PEM chain) and `ollama-fleet:tlsPrivateKey`.
- `off`: no certificate (dev only).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls
import pulumiverse_acme as acme

from fleet.config import PROJECT, FleetSettings
from fleet.stack_file import StackConfigError

TOKEN = f"{PROJECT}:index:GatewayCertificate"
SELF_SIGNED_VALIDITY_HOURS = 24 * 365
# Re-issued by `pulumi up` once less than this is left.
RENEW_BEFORE_HOURS = 24 * 30
ACME_MIN_DAYS_REMAINING = 30
CERT_KEY = f"{PROJECT}:tlsCertificate"
KEY_KEY = f"{PROJECT}:tlsPrivateKey"


@dataclass
class GatewayCertificateArgs:
    settings: FleetSettings
    stack: str
    fqdn: str | None
    zone_id: pulumi.Output[str] | None
    provided_cert: pulumi.Output[str] | None
    provided_key: pulumi.Output[str] | None


def san_names(fqdn: str | None) -> list[str]:
    """DNS names the self-signed certificate covers: the API's name and localhost (for checks on the host)."""
    names = [fqdn.rstrip(".").lower()] if fqdn else []
    return names + (["localhost"] if "localhost" not in names else [])


class GatewayCertificate(pulumi.ComponentResource):
    certificate_pem: pulumi.Output[str] | None
    private_key_pem: pulumi.Output[str] | None

    def __init__(self, name: str, args: GatewayCertificateArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        self._stack_file = f"Pulumi.{args.stack}.yaml"
        mode = args.settings.gateway.tls.mode
        if mode == "self-signed":
            certificate, key = self._self_signed(name, args)
        elif mode == "provided":
            certificate, key = self._provided(args)
        elif mode == "acme":
            certificate, key = self._acme(name, args)
        elif mode == "off":
            certificate = key = None
        else:  # pragma: no cover - the config model allows only the modes above
            raise StackConfigError(self._stack_file, [f"gateway.tls.mode: unknown mode {mode!r}"])
        self.certificate_pem = pulumi.Output.secret(certificate) if certificate is not None else None
        self.private_key_pem = pulumi.Output.secret(key) if key is not None else None
        self.register_outputs({"mode": mode})

    def _error(self, key: str, message: str) -> StackConfigError:
        return StackConfigError(self._stack_file, [f"{key}: {message}"])

    def _self_signed(self, name: str, args: GatewayCertificateArgs):
        child = pulumi.ResourceOptions(parent=self)
        names = san_names(args.fqdn)
        key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        cert = tls.SelfSignedCert(
            f"{name}-self-signed",
            private_key_pem=key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(common_name=names[0], organization=PROJECT),
            dns_names=names,
            ip_addresses=["127.0.0.1"],
            validity_period_hours=SELF_SIGNED_VALIDITY_HOURS,
            early_renewal_hours=RENEW_BEFORE_HOURS,
            allowed_uses=["digital_signature", "server_auth"],
            opts=child,
        )
        return cert.cert_pem, key.private_key_pem

    def _provided(self, args: GatewayCertificateArgs):
        if args.provided_cert is None or args.provided_key is None:
            missing = [k for k, v in ((CERT_KEY, args.provided_cert), (KEY_KEY, args.provided_key)) if v is None]
            raise self._error(
                "gateway.tls.mode",
                f"`provided` needs the secret config {' and '.join(missing)} "
                f"(pulumi config set --secret {missing[0]} < file.pem)",
            )

        def check(pem: str, marker: str, key: str) -> str:
            if not pem or marker not in pem:
                raise self._error(key, f"expected a PEM block containing {marker!r}")
            return pem

        certificate = args.provided_cert.apply(lambda pem: check(pem, "BEGIN CERTIFICATE", CERT_KEY))
        key = args.provided_key.apply(lambda pem: check(pem, "PRIVATE KEY", KEY_KEY))
        return certificate, key

    def _acme(self, name: str, args: GatewayCertificateArgs):
        settings = args.settings
        if not args.fqdn or args.zone_id is None:
            raise self._error(
                "gateway.tls.mode",
                "`acme` proves the domain with a DNS-01 challenge in Route 53: it needs gateway.domain and "
                "gateway.hostedZone on target aws; use `self-signed` or `provided` otherwise",
            )
        if settings.aws is None:
            raise self._error("aws", "`acme` needs the aws section (the Route 53 zone's account and region)")
        tls_settings = settings.gateway.tls
        child = pulumi.ResourceOptions(parent=self)
        provider = acme.Provider(f"{name}-acme", server_url=tls_settings.acme_server, opts=child)
        with_provider = pulumi.ResourceOptions(parent=self, provider=provider)
        account_key = tls.PrivateKey(f"{name}-acme-account", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        registration = acme.Registration(
            f"{name}-acme-registration",
            account_key_pem=account_key.private_key_pem,
            email_address=tls_settings.acme_email,
            opts=with_provider,
        )
        certificate = acme.Certificate(
            f"{name}-acme-cert",
            account_key_pem=registration.account_key_pem,
            common_name=args.fqdn.rstrip(".").lower(),
            key_type="P256",
            min_days_remaining=ACME_MIN_DAYS_REMAINING,
            # DNS-01 through Route 53 with the deployer's AWS credentials: the gateway need not be
            # reachable from the CA, and no challenge port is opened.
            dns_challenges=[
                acme.CertificateDnsChallengeArgs(
                    provider="route53",
                    config={"AWS_HOSTED_ZONE_ID": args.zone_id, "AWS_REGION": settings.aws.region},
                )
            ],
            opts=with_provider,
        )
        # nginx wants the leaf followed by the intermediates in one file.
        chain = pulumi.Output.all(certificate.certificate_pem, certificate.issuer_pem).apply(
            lambda parts: "".join(part or "" for part in parts)
        )
        return chain, certificate.private_key_pem
