"""The gateway's TLS certificate by `gateway.tls.mode`: the names a self-signed certificate covers, what the ACME
order asks for, which secret config keys a provided certificate comes from, and the checks of each.
components/tls.py wires exactly this plan.

- `self-signed`: an ECDSA P-256 key and a certificate for the API's name and localhost (dev, staging).
- `acme`: a certificate from an ACME CA (Let's Encrypt by default), proven with a DNS-01 challenge in the stack's
  Route 53 zone; renewed by `pulumi up` within 30 days of expiry.
- `provided`: the secret config keys `ollama-fleet:tlsCertificate` (PEM chain) and `ollama-fleet:tlsPrivateKey`.
- `off`: no certificate (dev only).
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.config import PROJECT, FleetSettings
from fleet.plans.gateway import server_name
from fleet.stack_file import StackConfigError

SELF_SIGNED_VALIDITY_HOURS = 24 * 365
# Re-issued by `pulumi up` once less than this is left.
RENEW_BEFORE_HOURS = 24 * 30
ACME_MIN_DAYS_REMAINING = 30
CERT_KEY = f"{PROJECT}:tlsCertificate"
KEY_KEY = f"{PROJECT}:tlsPrivateKey"
# The PEM block each provided secret must hold.
CERT_MARKER = "BEGIN CERTIFICATE"
KEY_MARKER = "PRIVATE KEY"


@dataclass(frozen=True)
class SelfSigned:
    """A self-signed certificate and its key (ECDSA P-256)."""

    common_name: str
    dns_names: tuple[str, ...]
    organization: str = PROJECT
    ip_addresses: tuple[str, ...] = ("127.0.0.1",)
    validity_period_hours: int = SELF_SIGNED_VALIDITY_HOURS
    early_renewal_hours: int = RENEW_BEFORE_HOURS
    allowed_uses: tuple[str, ...] = ("digital_signature", "server_auth")


@dataclass(frozen=True)
class Acme:
    """An ACME order for the API's name, proven with a DNS-01 challenge through Route 53 with the deployer's AWS
    credentials: the gateway need not be reachable from the CA, and no challenge port is opened."""

    server_url: str
    email: str | None
    common_name: str
    region: str  # the Route 53 zone's account region, for the challenge
    key_type: str = "P256"
    min_days_remaining: int = ACME_MIN_DAYS_REMAINING
    challenge_provider: str = "route53"


@dataclass(frozen=True)
class CertificatePlan:
    """Which certificate the gateway gets: exactly one of `self_signed` and `acme` for those modes, neither for
    `provided` (the secret config) and `off`."""

    mode: str
    stack_file: str
    self_signed: SelfSigned | None = None
    acme: Acme | None = None

    def _error(self, key: str, message: str) -> StackConfigError:
        return StackConfigError(self.stack_file, [f"{key}: {message}"])

    def check_zone(self, zone_given: bool) -> None:
        """An ACME certificate needs the Route 53 zone of its DNS-01 challenge."""
        if self.acme is not None and not zone_given:
            raise self._error(
                "gateway.tls.mode",
                "`acme` proves the domain with a DNS-01 challenge in Route 53: it needs gateway.domain and "
                "gateway.hostedZone on target aws; use `self-signed` or `provided` otherwise",
            )

    def check_provided(self, certificate_given: bool, key_given: bool) -> None:
        """A provided certificate needs both secret config keys."""
        missing = [key for key, given in ((CERT_KEY, certificate_given), (KEY_KEY, key_given)) if not given]
        if missing:
            raise self._error(
                "gateway.tls.mode",
                f"`provided` needs the secret config {' and '.join(missing)} "
                f"(pulumi config set --secret {missing[0]} < file.pem)",
            )

    def provided_certificate(self, pem: str) -> str:
        """The provided certificate chain, once it is known to hold a certificate PEM block."""
        return self._pem(pem, CERT_MARKER, CERT_KEY)

    def provided_key(self, pem: str) -> str:
        """The provided private key, once it is known to hold a private key PEM block."""
        return self._pem(pem, KEY_MARKER, KEY_KEY)

    def _pem(self, pem: str, marker: str, key: str) -> str:
        if not pem or marker not in pem:
            raise self._error(key, f"expected a PEM block containing {marker!r}")
        return pem


def san_names(fqdn: str | None) -> list[str]:
    """DNS names the self-signed certificate covers: the API's name and localhost (for checks on the host)."""
    names = [fqdn.rstrip(".").lower()] if fqdn else []
    return names + (["localhost"] if "localhost" not in names else [])


def full_chain(certificate_pem: str | None, issuer_pem: str | None) -> str:
    """What nginx wants in its certificate file: the leaf followed by the intermediates."""
    return (certificate_pem or "") + (issuer_pem or "")


def certificate_plan(settings: FleetSettings, stack: str) -> CertificatePlan:
    """The certificate of the stack's gateway, for the name it answers to (`fleet.plans.gateway.server_name`)."""
    stack_file = f"Pulumi.{stack}.yaml"
    tls = settings.gateway.tls
    fqdn = server_name(settings)
    if tls.mode == "self-signed":
        names = tuple(san_names(fqdn))
        return CertificatePlan(tls.mode, stack_file, self_signed=SelfSigned(common_name=names[0], dns_names=names))
    if tls.mode == "acme":
        plan = CertificatePlan(tls.mode, stack_file)
        if not fqdn or not settings.gateway.hosted_zone:
            plan.check_zone(False)
        if settings.aws is None:
            raise plan._error("aws", "`acme` needs the aws section (the Route 53 zone's account and region)")
        acme = Acme(server_url=tls.acme_server, email=tls.acme_email, common_name=fqdn.rstrip(".").lower(), region=settings.aws.region)
        return CertificatePlan(tls.mode, stack_file, acme=acme)
    if tls.mode in ("provided", "off"):
        return CertificatePlan(tls.mode, stack_file)
    raise StackConfigError(stack_file, [f"gateway.tls.mode: unknown mode {tls.mode!r}"])  # pragma: no cover - the model allows only these
