"""Prometheus' web configuration: basic auth in front of its API and UI.

Prometheus reads a bcrypt hash of each user's password (`--web.config.file`); the password itself is a secret
(secret config `ollama-fleet:prometheusPassword` or generated). The hash is computed here with a salt kept
in the stack's state, so the same password gives the same file on every `pulumi up` (no needless restart).
Every client of Prometheus sends the password: its own self-scrape (a password file), Grafana's datasource,
and operators.
"""

from __future__ import annotations

import base64
import re

import bcrypt
import yaml

PROMETHEUS_USER = "fleet"
# bcrypt's cost: Prometheus checks the hash on every request (it caches successful checks), so keep it moderate.
BCRYPT_COST = 10
SALT_HEX_CHARS = 32  # the salt's 16 bytes, as hex (a pulumi_random string kept in the state)
_SALT = re.compile(r"[0-9a-f]{32}", re.ASCII)
# bcrypt writes its salt in its own base64 alphabet.
_BCRYPT_ALPHABET = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
)
_HASH = re.compile(r"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}", re.ASCII)


class WebConfigError(ValueError):
    """A password, salt or hash Prometheus' web config cannot use."""


def hash_password(password: str, salt_hex: str) -> str:
    """bcrypt hash of `password` with the 16-byte salt `salt_hex` (32 lower-case hex digits, from the state)."""
    if not password:
        raise WebConfigError("the Prometheus password is empty")
    if not _SALT.fullmatch(salt_hex):
        raise WebConfigError("the bcrypt salt must be 32 lower-case hex digits (16 bytes)")
    salt = base64.b64encode(bytes.fromhex(salt_hex))[:22].translate(_BCRYPT_ALPHABET)
    return bcrypt.hashpw(password.encode(), b"$2b$%02d$" % BCRYPT_COST + salt).decode()


def render_web_config(password_hash: str, user: str = PROMETHEUS_USER) -> str:
    """The `--web.config.file` document: one basic-auth user."""
    if not _HASH.fullmatch(password_hash):
        raise WebConfigError("not a bcrypt hash")
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", user, flags=re.ASCII):
        raise WebConfigError(f"user {user!r} must be lower-case letters, digits, '_' and '-'")
    header = "# Prometheus web config of ollama-fleet (basic auth). Rendered by fleet.render.prometheus_web.\n"
    return header + yaml.safe_dump({"basic_auth_users": {user: password_hash}}, sort_keys=False)
