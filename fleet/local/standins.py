"""Stand-in images for the registry images the stack pins, built locally (no registry is reachable).

The Debian base comes from `scripts/docker-base.sh` (debootstrap + `docker import`); each stand-in is the
build context `scripts/standins/<name>` plus the files it copies: the Ollama build of the test bed (and the
CA of the replay's model mirror, fleet/local/model_mirror.py), and the Prometheus tools and Alertmanager
templates of the Debian packages the bootstrap installs. Images are tagged by a hash of what their build
reads, so a daemon whose data root survives between runs builds each one once.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet.local.ollama_build import ensure_ollama

ROOT = Path(__file__).resolve().parents[2]
STANDINS_DIR = ROOT / "scripts" / "standins"
BASE_SCRIPT = ROOT / "scripts" / "docker-base.sh"
REPOSITORY = "ollama-fleet-standin"


class StandinError(RuntimeError):
    pass


@dataclass(frozen=True)
class Standin:
    name: str  # folder under scripts/standins
    replaces: str  # the official repository it stands in for (`repository` of `repository:tag@digest`)
    health_binary: str  # what the program's health check (or the official entrypoint) calls inside it
    binaries: tuple[tuple[str, Callable[[], Path]], ...] = ()  # (name in the build context, where it is here)


def _host_binary(path: str) -> Callable[[], Path]:
    def find() -> Path:
        found = Path(path)
        if not found.exists():
            raise StandinError(f"{path} is missing: scripts/bootstrap.sh --full installs it")
        return found

    return find


def _mirror_ca() -> Path:
    from fleet.local.model_mirror import ca_certificate

    return ca_certificate()


ALERTMANAGER_TEMPLATES = "/usr/share/prometheus/alertmanager"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

STANDINS: tuple[Standin, ...] = (
    Standin("ollama", "ollama/ollama", "/usr/bin/ollama", (("ollama", ensure_ollama), ("model-mirror-ca.crt", _mirror_ca))),
    Standin("nginx", "nginx", "/usr/bin/wget"),
    Standin(
        "prometheus",
        "prom/prometheus",
        "/usr/bin/wget",
        (("prometheus", _host_binary("/usr/bin/prometheus")), ("promtool", _host_binary("/usr/bin/promtool"))),
    ),
    Standin(
        "alertmanager",
        "prom/alertmanager",
        "/usr/bin/wget",
        (
            ("alertmanager", _host_binary("/usr/bin/prometheus-alertmanager")),
            ("amtool", _host_binary("/usr/bin/amtool")),
            ("default.tmpl", _host_binary(f"{ALERTMANAGER_TEMPLATES}/default.tmpl")),
            ("email.tmpl", _host_binary(f"{ALERTMANAGER_TEMPLATES}/email.tmpl")),
        ),
    ),
    Standin(
        "node-exporter", "prom/node-exporter", "/usr/bin/wget",
        (("node_exporter", _host_binary("/usr/bin/prometheus-node-exporter")),),
    ),
    Standin(
        "nginx-exporter", "nginx/nginx-prometheus-exporter", "/usr/bin/nginx-prometheus-exporter",
        (("nginx-prometheus-exporter", _host_binary("/usr/bin/prometheus-nginx-exporter")),),
    ),
    Standin("python", "python", "/opt/python/bin/python", (("host-ca-certificates.crt", _host_binary(HOST_CA_BUNDLE)),)),
)
BY_REPOSITORY = {s.replaces: s for s in STANDINS}
# Registry images with no stand-in: Grafana is not packaged for Debian.
WITHOUT_STANDIN = ("grafana/grafana",)


def repository_of(reference: str) -> str:
    """`nginx:1.28.0-alpine@sha256:…` → `nginx`; `prom/prometheus:v3.5.0` → `prom/prometheus`."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return name.removeprefix("docker.io/").removeprefix("library/")


def base_tarball() -> Path:
    """The cached Debian root filesystem (built by scripts/docker-base.sh on first use)."""
    proc = subprocess.run(["bash", str(BASE_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StandinError(f"the Debian base image could not be made: {proc.stderr.strip()[-800:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _digest(*paths: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(b"\0" + path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _has_image(client, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def base_image(client) -> str:
    """Import the Debian base into the daemon (once per tarball content); its tag."""
    tarball = base_tarball()
    tag = f"{REPOSITORY}/debian:{_digest(tarball)}"
    if not _has_image(client, tag):
        repository, _, version = tag.rpartition(":")
        client.api.import_image_from_file(str(tarball), repository=repository, tag=version)
        if not _has_image(client, tag):
            raise StandinError(f"docker import of {tarball} did not produce {tag}")
    return tag


def build_standin(client, standin: Standin, base: str) -> str:
    """Build one stand-in (unless an image of the same inputs exists); its tag."""
    folder = STANDINS_DIR / standin.name
    sources = sorted(p for p in folder.iterdir() if p.is_file())
    binaries = [(name, find()) for name, find in standin.binaries]
    tag = f"{REPOSITORY}/{standin.name}:{_digest(*sources, *(p for _, p in binaries), extra=base)}"
    if _has_image(client, tag):
        return tag
    with tempfile.TemporaryDirectory(prefix=f"standin-{standin.name}-") as context:
        for source in sources:
            shutil.copy2(source, Path(context) / source.name)
        for name, path in binaries:
            shutil.copy2(path, Path(context) / name)
        build(client, context, tag, buildargs={"BASE": base})
    return tag


def build(client, context: str, tag: str, dockerfile: str | None = None, buildargs: dict | None = None) -> str:
    """`docker build` through the Engine API; host networking so that apt and pip reach their mirrors."""
    import docker

    try:
        image, _ = client.images.build(
            path=context, dockerfile=dockerfile, tag=tag, buildargs=buildargs or {}, network_mode="host",
            rm=True, forcerm=True,
        )
    except docker.errors.BuildError as exc:
        lines = [str(item.get("stream") or item.get("error") or "").rstrip() for item in exc.build_log]
        tail = "\n".join(line for line in lines if line)[-1500:]
        raise StandinError(f"build of {tag} failed: {exc.msg}\n{tail}") from None
    return image.id


def build_all(client) -> dict[str, str]:
    """Every stand-in, by the repository it replaces."""
    base = base_image(client)
    return {standin.replaces: build_standin(client, standin, base) for standin in STANDINS}
