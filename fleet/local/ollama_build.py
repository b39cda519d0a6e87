"""Build the Ollama server from the Go module proxy at a pinned tag, cached between runs.

Why a pinned v0.24 tag: releases up to v0.24.x compile with the Go toolchain alone (cgo + gcc/g++), giving a
binary that runs GGUF models on CPU; later releases need a separately CMake-built llama-server whose sources
are downloaded at build time. The HTTP API the test bed exercises is the same.

The Go module zip leaves out llama.cpp's nested vendor/ directory, so three single-header libraries are
missing from it: nlohmann/json (Debian: nlohmann-json3-dev) and stb_image (Debian: libstb-dev) come from
/usr/include; miniaudio, which Debian does not package and which only decodes audio attachments for
audio-capable multimodal models, is replaced by the small stand-in in scripts/ollama-shim/.

Speed: ggml is compiled for this CPU's vector extensions (fleet/local/cpu_profile.py), and the cache folder
is named after them, so a binary is only reused on a CPU with the same set. go-sqlite3 (used by Ollama's
`launch` command only) links the system libsqlite3 instead of compiling its 9 MB amalgamation. Go (>= 1.25)
compiles each cgo C/C++ file as its own action, `-p` of them at a time.

Stdlib only, so that scripts/build-ollama.sh can run it before the virtualenv has its dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fleet.local import cpu_profile

OLLAMA_MODULE = "github.com/ollama/ollama"
OLLAMA_TAG = "v0.24.0"

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIM_DIR = REPO_ROOT / "scripts" / "ollama-shim"

# header that must exist -> Debian package providing it
REQUIRED_HEADERS = {
    "/usr/include/nlohmann/json_fwd.hpp": "nlohmann-json3-dev",
    "/usr/include/stb/stb_image.h": "libstb-dev",
    "/usr/include/sqlite3.h": "libsqlite3-dev",
}
# Build tags: go-sqlite3 against the system library (see above).
BUILD_TAGS = "libsqlite3"
PROFILE_FILE = "build-profile.json"
REQUIRED_TOOLS = {"go": "the Go toolchain (>= 1.24)", "gcc": "gcc", "g++": "g++"}


class OllamaBuildError(RuntimeError):
    """The Ollama binary could not be built; the message says what is missing."""


def cache_root() -> Path:
    """Cache directory shared by builds (OLLAMA_FLEET_CACHE overrides ~/.cache/ollama-fleet)."""
    env = os.environ.get("OLLAMA_FLEET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ollama-fleet"


@functools.lru_cache(maxsize=1)
def build_profile() -> cpu_profile.BuildProfile:
    return cpu_profile.detect()


def binary_path(tag: str = OLLAMA_TAG) -> Path:
    """Where the binary for `tag`, compiled for this CPU's extensions, is cached."""
    return cache_root() / f"ollama-{tag}-{build_profile().key}" / "bin" / "ollama"


def _binary_works(path: Path, tag: str = OLLAMA_TAG) -> bool:
    """The binary runs and reports the tag's version (set at link time by build_command)."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return f"version is {tag.removeprefix('v')}" in (out.stdout + out.stderr)


def check_prerequisites() -> None:
    """Fail early, naming the missing tool or Debian package, instead of deep inside a cgo compile."""
    missing = [f"{tool} ({what})" for tool, what in REQUIRED_TOOLS.items() if shutil.which(tool) is None]
    missing += [f"{hdr} (apt-get install {pkg})" for hdr, pkg in REQUIRED_HEADERS.items() if not Path(hdr).is_file()]
    if not (SHIM_DIR / "miniaudio" / "miniaudio.h").is_file():
        missing.append(f"{SHIM_DIR}/miniaudio/miniaudio.h (part of this repository)")
    if missing:
        raise OllamaBuildError("cannot build Ollama, missing: " + "; ".join(missing))


def build_env(gobin: Path, profile: cpu_profile.BuildProfile) -> dict[str, str]:
    env = dict(os.environ)
    env["GOBIN"] = str(gobin)
    env["CGO_ENABLED"] = "1"
    # Use the installed toolchain; never fetch another one.
    env["GOTOOLCHAIN"] = "local"
    env["CGO_CPPFLAGS"] = f"-I{SHIM_DIR} {env.get('CGO_CPPFLAGS', '')}".strip()
    # Replace Go's defaults ("-O2 -g"): the CPU's extensions are what makes ggml fast; the profile names them.
    env["CGO_CFLAGS"] = profile.cflags
    env["CGO_CXXFLAGS"] = profile.cflags
    return env


def build_command(tag: str) -> list[str]:
    version = tag.removeprefix("v")
    return [
        "go", "install", "-trimpath", "-p", str(os.cpu_count() or 1), "-tags", BUILD_TAGS,
        "-ldflags", f"-s -w -X {OLLAMA_MODULE}/version.Version={version}",
        f"{OLLAMA_MODULE}@{tag}",
    ]


@contextlib.contextmanager
def _build_lock(path: Path):
    """One build at a time per cache (machines have 2 cores; a second build would only slow the first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_ollama(tag: str = OLLAMA_TAG, *, log=None, force: bool = False) -> Path:
    """Return the path of a working Ollama binary for `tag`, building it if the cache has none."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    target = binary_path(tag)
    if not force and _binary_works(target, tag):
        return target
    check_prerequisites()
    with _build_lock(cache_root() / f"ollama-{tag}.lock"):
        if not force and _binary_works(target, tag):  # built by whoever held the lock before us
            return target
        staging = target.parent.with_name("bin.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        cmd = build_command(tag)
        profile = build_profile()
        log(f"building Ollama {tag}: {' '.join(cmd)} (GOBIN={staging}, CGO_CFLAGS={profile.cflags!r}); "
            "first build takes several minutes")
        started = time.monotonic()
        proc = subprocess.run(cmd, env=build_env(staging, profile), cwd=str(staging), capture_output=True, text=True)
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise OllamaBuildError(f"go install {OLLAMA_MODULE}@{tag} failed after {elapsed:.0f}s:\n{tail}")
        built = staging / "ollama"
        if not _binary_works(built, tag):
            raise OllamaBuildError(f"build finished but {built} does not run")
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent.parent / PROFILE_FILE).write_text(profile.to_json())
        os.replace(built, target)
        shutil.rmtree(staging, ignore_errors=True)
        log(f"built {target} in {elapsed:.0f}s")
        return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=OLLAMA_TAG, help=f"Ollama module tag (default {OLLAMA_TAG})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cached binary works")
    parser.add_argument("--print-path", action="store_true", help="only print where the binary is/would be")
    args = parser.parse_args(argv)
    if args.print_path:
        print(binary_path(args.tag))
        return 0
    try:
        path = ensure_ollama(args.tag, force=args.force)
    except OllamaBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
