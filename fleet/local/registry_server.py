"""A read-only model registry over HTTPS, serving what an Ollama models folder holds, by the routes
`ollama pull` asks (Ollama v0.24.0 server/images.go pullModelManifest, server/download.go):

    GET|HEAD /v2/<namespace>/<model>/manifests/<tag>   manifests/<host>/<namespace>/<model>/<tag>
    HEAD /v2/<namespace>/<model>/blobs/sha256:<hex>     the blob's size
    GET  /v2/<namespace>/<model>/blobs/sha256:<hex>     307 to the same path on the blob host, as the
                                                        library sends blobs to its CDN (Ollama asks for the
                                                        redirect and downloads from its Location)
    GET  on the blob host                               blobs/sha256-<hex>, with byte ranges

The replay on a real Docker daemon runs it in a container whose network alias is the registry's host name
(`registry.ollama.ai`), so that the model step of the program pulls exactly as on a Docker host, from a
folder the test bed filled from its own GGUF file (fleet/local/model_mirror.py). Standard library only:
it runs in the Python stand-in image, copied in as one file. Every request is logged on stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
_NAME = r"[a-z0-9][a-z0-9._-]*"
MANIFEST = re.compile(rf"^/v2/(?P<namespace>{_NAME})/(?P<model>{_NAME})/manifests/(?P<tag>[A-Za-z0-9._-]+)$")
BLOB = re.compile(rf"^/v2/(?P<namespace>{_NAME})/(?P<model>{_NAME})/blobs/sha256:(?P<hex>[0-9a-f]{{64}})$")
RANGE = re.compile(r"^bytes=(?P<start>[0-9]+)-(?P<end>[0-9]*)$")
CHUNK = 1 << 20


def make_handler(root: Path, host: str, blob_host: str):
    class Handler(BaseHTTPRequestHandler):
        server_version = "fleet-model-registry"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
            print(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}", flush=True)

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _file(self, path: Path, content_type: str, digest: str) -> None:
            size = path.stat().st_size
            start, end = 0, size - 1
            wanted = self.headers.get("Range")
            status = 200
            if wanted:
                match = RANGE.match(wanted.strip())
                if not match or int(match.group("start")) >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(match.group("start"))
                end = min(int(match.group("end") or size - 1), size - 1)
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Docker-Content-Digest", digest)
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            with path.open("rb") as handle:
                handle.seek(start)
                left = end - start + 1
                while left > 0:
                    chunk = handle.read(min(CHUNK, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)

        def do_GET(self) -> None:  # noqa: N802 (http.server's method name)
            path = self.path.split("?", 1)[0]
            manifest = MANIFEST.match(path)
            if manifest:
                file = root / "manifests" / host / manifest.group("namespace") / manifest.group("model") / manifest.group("tag")
                if not file.is_file():
                    return self._error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {path}")
                import hashlib

                digest = "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
                return self._file(file, MANIFEST_TYPE, digest)
            blob = BLOB.match(path)
            if blob:
                file = root / "blobs" / f"sha256-{blob.group('hex')}"
                if not file.is_file():
                    return self._error(404, "BLOB_UNKNOWN", f"blob unknown: {path}")
                on_blob_host = (self.headers.get("Host") or "").split(":", 1)[0] == blob_host
                if self.command == "GET" and not on_blob_host:
                    self.send_response(307)
                    self.send_header("Location", f"https://{blob_host}{path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self._file(file, "application/octet-stream", f"sha256:{blob.group('hex')}")
            return self._error(404, "NAME_UNKNOWN", f"not a manifest or blob route: {path}")

        do_HEAD = do_GET  # noqa: N815

    return Handler


def serve(root: Path, listen: str, cert: Path, key: Path, host: str, blob_host: str) -> None:
    address, _, port = listen.rpartition(":")
    server = ThreadingHTTPServer((address or "0.0.0.0", int(port)), make_handler(root, host, blob_host))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"serving {root} as {host} on {listen}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="an Ollama models folder (manifests/, blobs/)")
    parser.add_argument("--listen", default="0.0.0.0:443")
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--host", default="registry.ollama.ai", help="the registry host the manifests are kept under")
    parser.add_argument("--blob-host", required=True, help="the host name blob downloads are redirected to")
    args = parser.parse_args(argv)
    serve(args.models, args.listen, args.cert, args.key, args.host, args.blob_host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
