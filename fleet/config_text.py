"""The allowed shape of every string a stack file sets.

Each string reaches a shell script, an nginx or Prometheus file, a container argument or an AWS call, so each
is checked at load by an explicit ASCII pattern matched over the whole value (`re.fullmatch`: a trailing
newline or a non-ASCII digit is refused), and the renderers still quote what they interpolate. The words in
`allowed` appear in the error message and in docs/configuration.md, so both say the same.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, get_args, get_origin

from pydantic import AfterValidator


class SettingProblem(ValueError):
    """A problem found by a check over several fields, located at `key` (camelCase keys below the model that
    raised it), with the offending value. The stack-file reader turns it into `<dotted key>: <message>`."""

    def __init__(self, key: tuple[str | int, ...], message: str, value: Any = None):
        super().__init__(message)
        self.key = key
        self.message = message
        self.value = value


@dataclass(frozen=True)
class TextRule:
    """A pattern a whole string must match, and the same rule in words."""

    regex: str
    allowed: str
    extra: Callable[[str], str | None] | None = None  # a further check; returns what is wrong, or None

    def __call__(self, value: str) -> str:
        if not value.isascii() or re.fullmatch(self.regex, value, flags=re.ASCII) is None:
            raise ValueError(f"must be {self.allowed}")
        if self.extra is not None:
            wrong = self.extra(value)
            if wrong:
                raise ValueError(f"{wrong}; must be {self.allowed}")
        return value


def text(rule: TextRule) -> Any:
    """`Annotated[str, ...]` checked by `rule` (config_docs lists `rule.allowed`)."""
    return Annotated[str, AfterValidator(rule)]


def rules_of(annotation: Any) -> list[TextRule]:
    """Every TextRule inside a field's annotation (through Optional, list, dict and Annotated)."""
    found: list[TextRule] = []
    if get_origin(annotation) is Annotated:
        for item in annotation.__metadata__:
            if isinstance(getattr(item, "func", None), TextRule):
                found.append(item.func)
    for arg in get_args(annotation):
        if not isinstance(arg, (str, int)):
            found.extend(r for r in rules_of(arg) if r not in found)
    return found


def _network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        return str(exc)
    return None


def _ipv4_address(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError as exc:
        return str(exc)
    return None


def _not_a_source_suffix(value: str) -> str | None:
    # Ollama reads `:local` and `:cloud` as where a model comes from (v0.24.0 internal/modelref), not as a tag.
    tag = value.partition(":")[2]
    if tag.lower() in ("local", "cloud"):
        return f"`:{tag}` is Ollama's source suffix, not a tag"
    return None


_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = rf"(?=.{{1,253}}\Z)({_LABEL}\.)+[a-z]([a-z0-9-]{{0,61}}[a-z0-9])?"
_HOST_OR_IP = rf"({_HOST}|{_LABEL}|[0-9]{{1,3}}(\.[0-9]{{1,3}}){{3}})"
_PATH_SEGMENT = r"[A-Za-z0-9_.][A-Za-z0-9_.+-]*"

DNS_LABEL = TextRule(
    r"[a-z]([a-z0-9-]{0,30}[a-z0-9])?", "1 to 32 of lower-case a-z, 0-9 and '-', starting with a letter, not ending with '-'"
)
MODEL_NAME = TextRule(r"[a-z0-9][a-z0-9._-]{0,63}", "1 to 64 of lower-case a-z, 0-9, '.', '_', '-', starting with a letter or digit (e.g. `llama3.1`)")
MODEL_TAG = TextRule(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "1 to 64 of A-Z, a-z, 0-9, '.', '_', '-', starting with a letter or digit (e.g. `8b`)")
MODEL_ALIAS = TextRule(
    r"[a-z0-9][a-z0-9._-]{0,63}(:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?",
    "`name` or `name:tag` (e.g. `chat`, `gpt-4o-mini`, `chat:v2`): the name 1 to 64 of lower-case a-z, 0-9, '.', "
    "'_', '-', the tag 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-' (not `local` or `cloud`), each starting with a "
    "letter or digit; `name` alone means `name:latest`, as Ollama reads it",
    _not_a_source_suffix,
)
GGUF_PATH = TextRule(
    rf"(~/|/)?({_PATH_SEGMENT}/)*{_PATH_SEGMENT}\.gguf",
    "a path to a `.gguf` file whose parts are A-Z, a-z, 0-9, '_', '.', '+', '-' (no part starting with '-'; no spaces)",
)
DIGEST = TextRule(r"sha256:[0-9a-f]{64}", "`sha256:` and 64 lower-case hex digits")
OLLAMA_DURATION = TextRule(r"-1|0|[1-9][0-9]{0,5}(ms|s|m|h)", "a duration such as `5m`, `24h`, `0` (unload at once) or `-1` (for ever)")
# Prometheus and Alertmanager read a duration into Go's time.Duration: nanoseconds in an int64, about 292 years.
_DURATION_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86_400 * 10**9, "w": 604_800 * 10**9, "y": 31_536_000 * 10**9}
_GO_DURATION_MAX_NS = 2**63 - 1


def _in_go_duration_range(value: str) -> str | None:
    number, unit = re.fullmatch(r"([0-9]+)([a-z]+)", value).groups()
    if int(number) * _DURATION_NS[unit] > _GO_DURATION_MAX_NS:
        return "longer than Prometheus can hold (about 292 years)"
    return None


PROM_DURATION = TextRule(
    r"[1-9][0-9]{0,5}(ms|s|m|h|d|w|y)",
    "a Prometheus duration above zero such as `15s`, `15d` or `720h`, at most 292y",
    _in_go_duration_range,
)
NGINX_SIZE = TextRule(r"[1-9][0-9]{0,9}[kKmMgG]?", "an nginx size above zero such as `16m`, `512k` or `1g` (ASCII digits)")
CIDR = TextRule(r"[0-9A-Fa-f:.]{2,39}/[0-9]{1,3}", "a CIDR such as 203.0.113.0/24 (network address, no host bits)", _network)
DOMAIN = TextRule(_HOST, "a lower-case DNS name of at least two labels such as `llm.example.com`")
HOSTED_ZONE = TextRule(rf"{_HOST}\.?|Z[A-Z0-9]{{4,32}}", "a lower-case DNS zone name such as `example.com` or a Route 53 zone id such as `Z0123456789ABC`")
EMAIL = TextRule(
    r"[A-Za-z0-9._%+-]{1,64}@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}", "an e-mail address such as `platform@example.com`"
)
HTTPS_URL = TextRule(
    rf"https://{_HOST_OR_IP}(:[0-9]{{1,5}})?(/[A-Za-z0-9._~%-]+)*/?",
    "an `https://` URL of letters, digits and `._~%-` such as `https://acme-v02.api.letsencrypt.org/directory`",
)
HTTP_URL = TextRule(
    rf"https?://{_HOST_OR_IP}(:[0-9]{{1,5}})?(/[A-Za-z0-9._~%-]+)*/?",
    "an `http://` or `https://` URL of letters, digits and `._~%-` (no query string: a URL holding a token is a secret)",
)
HOST_PORT = TextRule(rf"{_HOST_OR_IP}:[0-9]{{1,5}}", "`host:port` such as `smtp.example.com:587`")
SLACK_CHANNEL = TextRule(r"[#@][a-z0-9._-]{1,80}", "a Slack channel `#name` or user `@name` (lower-case a-z, 0-9, '.', '_', '-')")
LOGIN_NAME = TextRule(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", "1 to 64 of A-Z, a-z, 0-9, '.', '_', '@', '-', starting with a letter or digit")
UNIX_USER = TextRule(r"[a-z_][a-z0-9_-]{0,31}", "a Unix user name: lower-case a-z, 0-9, '_', '-', starting with a letter or '_', at most 32")
ZONE = TextRule(r"[a-z]{2}(-gov)?-[a-z]+-[0-9]{1,2}(-[a-z]+-[0-9]{1,2})?[a-z]", "an availability zone name such as `us-east-1a`")
VPC_ID = TextRule(r"vpc-[0-9a-f]{8,17}", "a VPC id such as `vpc-0123456789abcdef0`")
SUBNET_ID = TextRule(r"subnet-[0-9a-f]{8,17}", "a subnet id such as `subnet-0123456789abcdef0`")
AMI_ID = TextRule(r"ami-[0-9a-f]{8,17}", "an AMI id such as `ami-0123456789abcdef0`")
DOCKER_HOST = TextRule(
    rf"unix:///{_PATH_SEGMENT}(/{_PATH_SEGMENT})*|tcp://{_HOST_OR_IP}:[0-9]{{1,5}}|ssh://[a-z_][a-z0-9_-]{{0,31}}@{_HOST_OR_IP}(:[0-9]{{1,5}})?",
    "`unix:///path/to/docker.sock`, `tcp://host:port` or `ssh://user@host`",
)
IPV4_ADDRESS = TextRule(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", "an IPv4 address such as `127.0.0.1`", _ipv4_address)
# AWS's own rule for tag keys and values (letters, digits, spaces and _ . : / = + - @).
TAG_KEY = TextRule(r"[A-Za-z0-9 _.:/=+@-]{1,128}", "1 to 128 of A-Z, a-z, 0-9, space and `_.:/=+-@`")
TAG_VALUE = TextRule(r"[A-Za-z0-9 _.:/=+@-]{0,256}", "up to 256 of A-Z, a-z, 0-9, space and `_.:/=+-@`")


def is_zone_id(value: str) -> bool:
    """A Route 53 hosted zone id (`Z…`) rather than a zone name."""
    return re.fullmatch(r"Z[A-Z0-9]{4,32}", value, flags=re.ASCII) is not None
