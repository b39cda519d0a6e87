"""The resources the program registers for a stack, captured as `pulumi up` would send them to the providers.

The real program runs under Pulumi's mocks (`fleet.preview.offline.run_program`, as `fleet preview` runs it) in a
process of its own (mocks are process-global): `python -m fleet.local.docker_capture --stack dev` prints
the capture as JSON on stdout, and `capture()` reads it. Everything keeps the mock cloud's outputs
(`fleet.preview.mock_cloud`) except the random and tls resources: their providers compute locally in a real
deployment too, so here they do the same — generated passwords and ids, a private key and a self-signed
certificate made by openssl from the resource's own inputs — and the containers get secrets that work.

The capture holds those secrets (API keys, the gateway's private key): it travels only through the pipe
between the two processes, and `fleet.local.docker_plan` builds the replay's plan from it in memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fleet.local.openssl import run_openssl

ROOT = Path(__file__).resolve().parents[2]
CAPTURE_TIMEOUT_S = 300


class CaptureError(RuntimeError):
    pass


# ---- real values for the resources whose providers compute locally ---------------------------------------


def _openssl(*args: str, stdin: str | None = None) -> str:
    return run_openssl(*args, error=CaptureError, stdin=stdin)


def private_key(inputs: dict[str, Any]) -> dict[str, str]:
    """A tls PrivateKey's PEM outputs, for its `algorithm` (ECDSA with `ecdsaCurve`, RSA with `rsaBits`)."""
    algorithm = inputs.get("algorithm", "RSA")
    if algorithm == "ECDSA":
        curves = {"P224": "P-224", "P256": "P-256", "P384": "P-384", "P521": "P-521"}
        curve = curves.get(inputs.get("ecdsaCurve", "P224"))
        if curve is None:
            raise CaptureError(f"tls PrivateKey: ecdsaCurve {inputs.get('ecdsaCurve')!r} is not one of {', '.join(curves)}")
        pem = _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}")
    elif algorithm == "RSA":
        pem = _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{int(inputs.get('rsaBits', 2048))}")
    elif algorithm == "ED25519":
        pem = _openssl("genpkey", "-algorithm", "ED25519")
    else:
        raise CaptureError(f"tls PrivateKey: algorithm {algorithm!r} is not ECDSA, RSA or ED25519")
    return {"privateKeyPem": pem, "publicKeyPem": _openssl("pkey", "-pubout", stdin=pem)}


_KEY_USAGES = {
    "digital_signature": "digitalSignature",
    "key_encipherment": "keyEncipherment",
    "cert_signing": "keyCertSign",
    "crl_signing": "cRLSign",
}
_EXTENDED_USAGES = {"server_auth": "serverAuth", "client_auth": "clientAuth"}


def self_signed_certificate(inputs: dict[str, Any]) -> str:
    """A tls SelfSignedCert's `certPem`: its subject, names, addresses, validity and uses, signed by its key."""
    subject = inputs.get("subject") or {}
    if isinstance(subject, list):
        subject = subject[0] if subject else {}
    fields = {"commonName": "CN", "organization": "O", "organizationalUnit": "OU", "country": "C", "locality": "L",
              "province": "ST"}
    parts = [f"/{short}={subject[key]}" for key, short in fields.items() if subject.get(key)]
    names = [f"DNS:{n}" for n in inputs.get("dnsNames") or []] + [f"IP:{a}" for a in inputs.get("ipAddresses") or []]
    uses = inputs.get("allowedUses") or []
    unknown = [u for u in uses if u not in _KEY_USAGES and u not in _EXTENDED_USAGES]
    if unknown:
        raise CaptureError(f"tls SelfSignedCert: allowedUses {unknown} are not supported here")
    days = max(1, math.ceil(float(inputs.get("validityPeriodHours", 24)) / 24))
    extensions = [f"subjectAltName={','.join(names)}"] if names else []
    key_usages = [_KEY_USAGES[u] for u in uses if u in _KEY_USAGES]
    extended = [_EXTENDED_USAGES[u] for u in uses if u in _EXTENDED_USAGES]
    if key_usages:
        extensions.append(f"keyUsage=critical,{','.join(key_usages)}")
    if extended:
        extensions.append(f"extendedKeyUsage={','.join(extended)}")
    extensions.append(f"basicConstraints=critical,CA:{'TRUE' if inputs.get('isCaCertificate') else 'FALSE'}")
    with tempfile.TemporaryDirectory(prefix="fleet-capture-") as folder:
        key = Path(folder) / "key.pem"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(inputs["privateKeyPem"])
        args = ["req", "-x509", "-new", "-key", str(key), "-days", str(days), "-subj", "".join(parts) or "/"]
        for extension in extensions:
            args += ["-addext", extension]
        return _openssl(*args)


def random_password(inputs: dict[str, Any]) -> str:
    """A random password of the resource's length from the character classes it allows."""
    alphabet = ""
    if inputs.get("upper", True):
        alphabet += string.ascii_uppercase
    if inputs.get("lower", True):
        alphabet += string.ascii_lowercase
    if inputs.get("numeric", True):
        alphabet += string.digits
    if inputs.get("special", True):
        alphabet += inputs.get("overrideSpecial") or "!@#$%&*()-_=+[]{}<>:?"
    if not alphabet:
        raise CaptureError("random RandomPassword: every character class is off")
    return "".join(secrets.choice(alphabet) for _ in range(int(inputs.get("length", 16))))


def _local_outputs(type_: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """Real outputs of a resource whose provider computes locally; None for every other type."""
    import base64

    if type_ == "random:index/randomPassword:RandomPassword":
        return {"result": random_password(inputs)}
    if type_ == "random:index/randomId:RandomId":
        raw = secrets.token_bytes(int(inputs.get("byteLength", 8)))
        return {
            "hex": raw.hex(),
            "b64Std": base64.b64encode(raw).decode(),
            "b64Url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
            "dec": str(int.from_bytes(raw, "big")),
        }
    if type_ == "tls:index/privateKey:PrivateKey":
        return private_key(inputs)
    if type_ == "tls:index/selfSignedCert:SelfSignedCert":
        return {"certPem": self_signed_certificate(inputs)}
    return None


def _replay_mocks():
    from pulumi.runtime import mocks as pulumi_mocks

    from fleet.preview.mock_cloud import FleetMocks

    class ReplayMocks(FleetMocks):
        def new_resource(self, args: pulumi_mocks.MockResourceArgs):
            resource_id, outputs = super().new_resource(args)
            if args.custom:
                real = _local_outputs(args.typ, plain(args.inputs))
                if real is not None:
                    outputs = {**outputs, **real}
            return [resource_id, outputs]

    return ReplayMocks()


# ---- the capture -----------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A recorded value with Pulumi's secret markers removed (the replay needs the values themselves)."""
    from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

    if is_rpc_secret(value):
        return plain(unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def run_capture(stack: str) -> dict[str, Any]:
    """Run the program for `stack` under the replay's mocks (in this process): the capture as plain data."""
    import pulumi

    from fleet import node_runtime
    from fleet.preview import offline as preview
    from fleet.stack_file import load_stack

    config = load_stack(stack, ROOT)
    secrets_out: dict[str, Any] = {}

    def also(fleet):
        return pulumi.Output.all(
            apiKeys=fleet.api_keys,
            adminApiKey=fleet.admin_key,
            prometheusPassword=fleet.prometheus_password,
        ).apply(secrets_out.update)

    result = preview.run_program(config, mocks=_replay_mocks(), also=also)
    pulls = sorted(
        {ref for group in config.settings.node_groups for model in group.models
         if (ref := node_runtime.pull_reference(model)) is not None}
    )
    return {
        "stack": stack,
        "root": str(Path.cwd()),
        "pulls": pulls,
        "outputs": plain({**result.outputs, **secrets_out}),
        "resources": [
            {
                "type": r.type,
                "name": r.name,
                "urn": r.urn,
                "id": result.ids.get(r.urn),
                "custom": r.custom,
                "parent": r.parent_urn,
                "dependsOn": list(r.depends_on),
                "retainOnDelete": r.retain_on_delete,
                "inputs": plain(r.inputs),
                "outputs": plain(r.outputs),
            }
            for r in result.resources
        ],
    }


def capture(stack: str = "dev") -> dict[str, Any]:
    """The capture of `stack`, from a process of its own (run from the repository root, like `pulumi up`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.local.docker_capture", "--stack", stack],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CAPTURE_TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    if proc.returncode != 0:
        raise CaptureError(proc.stderr.strip()[-2000:] or f"the capture of stack {stack} failed ({proc.returncode})")
    try:
        return json.loads(proc.stdout)
    except ValueError as error:
        raise CaptureError(f"the capture of stack {stack} printed no JSON: {error}") from None


def main(argv: list[str] | None = None) -> int:
    from fleet.stack_file import StackConfigError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="dev")
    args = parser.parse_args(argv)
    try:
        data = run_capture(args.stack)
    except (StackConfigError, CaptureError) as error:
        print(str(error), file=sys.stderr)
        return 2
    json.dump(data, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
