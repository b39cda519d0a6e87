"""The Ollama model library for the replay on a real Docker daemon, where no registry is reachable.

The program's model step runs `ollama pull <reference>` in each Ollama container. For the replay, a
container of the Python stand-in serves the registry routes (fleet/local/registry_server.py) over HTTPS on
the stack's network under the alias `registry.ollama.ai`, from a models folder in the build cache that the
test bed's own Ollama fills once: `ollama create <reference>` from the GGUF file the loopback data plane
uses (the same model and quantization). Its certificate is signed by a CA made here once; the Ollama
stand-in image trusts that CA (scripts/standins/ollama), which is the only difference the pull sees.

Only references with a local GGUF file can be served (the dev stack's SmolLM2-135M q4_1): any other is an
error naming what is available.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from fleet.local.ollama_build import cache_root
from fleet.local.openssl import run_openssl

REGISTRY_HOST = "registry.ollama.ai"
# Where the mirror redirects blob downloads, as the library redirects them to its CDN (a reserved name).
BLOB_HOST = "blobs.model-mirror.invalid"
SERVER_SCRIPT = Path(__file__).resolve().with_name("registry_server.py")
CONTAINER_SUFFIX = "model-mirror"
MIRROR_LABEL = "ollama-fleet.replay"  # on the mirror container, value "model-mirror"


class MirrorError(RuntimeError):
    pass


def mirror_root() -> Path:
    return cache_root() / "docker" / "model-mirror"


def tls_dir() -> Path:
    """The CA and server certificate, per set of names the certificate carries."""
    import hashlib

    names = hashlib.sha256(f"{REGISTRY_HOST} {BLOB_HOST}".encode()).hexdigest()[:8]
    return mirror_root() / f"tls-{names}"


def models_dir() -> Path:
    return mirror_root() / "models"


def _openssl(*args: str, cwd: Path) -> None:
    run_openssl(*args, error=MirrorError, cwd=cwd)


def ensure_tls() -> Path:
    """The mirror's CA (ca.crt) and server certificate for registry.ollama.ai (server.crt, server.key),
    made once per machine; the folder holding them."""
    folder = tls_dir()
    if all((folder / name).is_file() for name in ("ca.crt", "server.crt", "server.key")):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with (folder.parent / ".tls.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((folder / name).is_file() for name in ("ca.crt", "server.crt", "server.key")):
            return folder
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix="tls.") as work:
            where = Path(work)
            os.chmod(where, 0o700)
            _openssl(
                "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=ollama-fleet model mirror CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                cwd=where,
            )
            _openssl(
                "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={REGISTRY_HOST}", cwd=where,
            )
            (where / "server.ext").write_text(
                f"subjectAltName=DNS:{REGISTRY_HOST},DNS:{BLOB_HOST}\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            )
            _openssl(
                "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "server.crt", "-days", "3650", "-extfile", "server.ext", cwd=where,
            )
            for name in ("ca.crt", "server.crt", "server.key", "ca.key"):
                os.chmod(where / name, 0o644 if name.endswith(".crt") else 0o600)
                os.replace(where / name, folder / name)
    return folder


def ca_certificate() -> Path:
    """The CA the Ollama stand-in trusts (made on first use)."""
    return ensure_tls() / "ca.crt"


def local_sources() -> dict[str, Callable[[], Path]]:
    """Library reference -> the GGUF file the test bed has for it."""
    from fleet import catalog
    from fleet.local.dataplane import LOCAL_GGUFS

    sources = {}
    for (ref, quantization), find in LOCAL_GGUFS.items():
        entry = catalog.find_model(ref)
        if entry is not None:
            sources[entry.pull_tag(quantization)] = find
    return sources


def manifest_of(reference: str, root: Path | None = None) -> Path:
    from fleet.node_runtime import manifest_path

    return Path(manifest_path(reference, str(root or models_dir())))


def ensure_models(references: Iterable[str], log: Callable[[str], None] = lambda _: None) -> Path:
    """The mirror's models folder holding every reference (imported once from its GGUF file)."""
    from fleet.local.ollama import OllamaServer
    from fleet.local.ollama_build import ensure_ollama

    references = sorted(set(references))
    sources = local_sources()
    missing = [r for r in references if r not in sources]
    if missing:
        raise MirrorError(
            f"no registry is reachable here and the test bed has no GGUF file for {', '.join(missing)}; "
            f"the replay can pull {', '.join(sorted(sources))} (the dev stack's model)"
        )
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (mirror_root() / ".models.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        todo = [r for r in references if not manifest_of(r, root).is_file()]
        if not todo:
            return root
        with tempfile.TemporaryDirectory(prefix="fleet-mirror-") as state:
            server = OllamaServer(ensure_ollama(), Path(state), root, name="model-mirror-seed")
            server.start()
            try:
                for reference in todo:
                    log(f"model mirror: importing {reference} from {sources[reference]().name}")
                    server.import_gguf(reference, sources[reference]())
            finally:
                server.stop()
    for reference in todo:
        if not manifest_of(reference, root).is_file():
            raise MirrorError(f"ollama create {reference} left no manifest at {manifest_of(reference, root)}")
    return root


def container_name(stack: str) -> str:
    return f"{stack}-{CONTAINER_SUFFIX}"


def start(client, stack: str, networks: Iterable[str], python_image: str, references: Iterable[str],
          log: Callable[[str], None] = lambda _: None):
    """Run the mirror on `networks` under the aliases registry.ollama.ai and BLOB_HOST; the container."""
    import docker

    folder = ensure_tls()
    root = ensure_models(references, log)
    name = container_name(stack)
    try:
        client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass
    networks = list(networks)
    if not networks:
        raise MirrorError("the plan has no network to put the model mirror on")
    api = client.api
    host_config = api.create_host_config(
        binds=[f"{root}:/models:ro", f"{folder / 'server.crt'}:/tls/server.crt:ro",
               f"{folder / 'server.key'}:/tls/server.key:ro", f"{SERVER_SCRIPT}:/srv/registry_server.py:ro"],
        network_mode=networks[0],
        restart_policy={"Name": "unless-stopped"},
    )
    created = api.create_container(
        python_image,
        command=["python", "/srv/registry_server.py", "--models", "/models", "--listen", "0.0.0.0:443",
                 "--cert", "/tls/server.crt", "--key", "/tls/server.key", "--host", REGISTRY_HOST, "--blob-host", BLOB_HOST],
        name=name,
        labels={MIRROR_LABEL: CONTAINER_SUFFIX},
        host_config=host_config,
        networking_config=api.create_networking_config(
            {networks[0]: api.create_endpoint_config(aliases=[REGISTRY_HOST, BLOB_HOST])}
        ),
    )
    for network in networks[1:]:
        api.connect_container_to_network(created["Id"], network, aliases=[REGISTRY_HOST, BLOB_HOST])
    api.start(created["Id"])
    return client.containers.get(created["Id"])


def requests_served(container) -> list[str]:
    """The requests the mirror answered so far (`METHOD path status`), from its log."""
    lines = container.logs(stdout=True, stderr=False).decode(errors="replace").splitlines()
    return [line for line in lines if line.split(" ", 1)[0] in ("GET", "HEAD")]
