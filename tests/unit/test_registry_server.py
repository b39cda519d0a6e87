"""The replay's model registry (fleet/local/registry_server.py) on loopback over TLS: the routes `ollama pull`
asks, the redirect of blob downloads to the blob host, byte ranges, and registry-shaped errors. The real
`ollama pull` through it runs in tests/docker/test_replay.py."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from fleet.local.registry_server import MANIFEST_TYPE, make_handler

HOST = "registry.test"
BLOB_HOST = "blobs.test"
BLOB = bytes(range(256)) * 64
BLOB_HEX = hashlib.sha256(BLOB).hexdigest()
MANIFEST = b'{"schemaVersion":2,"layers":[{"digest":"sha256:' + BLOB_HEX.encode() + b'"}]}'


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    manifest = root / "models" / "manifests" / HOST / "library" / "smollm2" / "135m"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(MANIFEST)
    (root / "models" / "blobs").mkdir()
    (root / "models" / "blobs" / f"sha256-{BLOB_HEX}").write_bytes(BLOB)
    subprocess.run(
        [shutil.which("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=localhost",
         "-addext", f"subjectAltName=DNS:localhost,DNS:{BLOB_HOST}"],
        cwd=root, check=True, capture_output=True,
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(root / "models", HOST, BLOB_HOST))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(root / "cert.pem"), str(root / "key.pem"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = httpx.Client(base_url=f"https://localhost:{server.server_address[1]}",
                          verify=ssl.create_default_context(cafile=str(root / "cert.pem")), timeout=10)
    yield client
    client.close()
    server.shutdown()
    server.server_close()


def test_a_manifest_is_served_with_its_digest(registry):
    response = registry.get("/v2/library/smollm2/manifests/135m")
    assert response.status_code == 200 and response.content == MANIFEST
    assert response.headers["content-type"] == MANIFEST_TYPE
    assert response.headers["docker-content-digest"] == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def test_a_blob_download_is_redirected_to_the_blob_host_as_the_library_does(registry):
    path = f"/v2/library/smollm2/blobs/sha256:{BLOB_HEX}"
    head = registry.head(path)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(BLOB)
    redirect = registry.get(path)
    assert redirect.status_code == 307 and redirect.headers["location"] == f"https://{BLOB_HOST}{path}"
    whole = registry.get(path, headers={"Host": BLOB_HOST})
    assert whole.status_code == 200 and whole.content == BLOB


def test_byte_ranges_on_the_blob_host(registry):
    path = f"/v2/library/smollm2/blobs/sha256:{BLOB_HEX}"
    part = registry.get(path, headers={"Host": BLOB_HOST, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == BLOB[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(BLOB)}"
    tail = registry.get(path, headers={"Host": BLOB_HOST, "Range": f"bytes={len(BLOB) - 10}-"})
    assert tail.status_code == 206 and tail.content == BLOB[-10:]
    beyond = registry.get(path, headers={"Host": BLOB_HOST, "Range": f"bytes={len(BLOB)}-"})
    assert beyond.status_code == 416


@pytest.mark.parametrize("path, code", [
    ("/v2/library/smollm2/manifests/7b", "MANIFEST_UNKNOWN"),
    ("/v2/library/smollm2/blobs/sha256:" + "0" * 64, "BLOB_UNKNOWN"),
    ("/v2/library/smollm2/manifests/../../../../etc/passwd", "NAME_UNKNOWN"),
    ("/", "NAME_UNKNOWN"),
])
def test_what_it_does_not_hold_is_a_registry_404(registry, path, code):
    response = registry.get(path, extensions={"target": path.encode()})
    assert response.status_code == 404 and response.json()["errors"][0]["code"] == code
