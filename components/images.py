"""Container images on a host: registry images pulled by their pinned reference, and the metering exporter
image built on the host itself (it also runs the gateway log exporter).

Registry images are `docker.RemoteImage`s named `repository:tag@sha256:digest` (the stack's `images`), kept on
the host when the resource goes away so that two components sharing an image never delete it under each
other. Containers run the pulled image's ID, so a new digest in the config replaces them.

The exporter image is built by `docker.Image` (never pushed: it exists only on the host that runs it) from
`exporter/Dockerfile` on top of the pinned Python image. Its tag is a hash of everything the build reads,
and containers run its local image ID (`repoDigest`), so a change to the exporter's code rebuilds the
image and replaces the containers, and nothing else does.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pulumi
import pulumi_docker as docker

from components.containers import Placement
from fleet.config import PROJECT

ROOT = Path(__file__).resolve().parents[1]
EXPORTER_DOCKERFILE = "exporter/Dockerfile"
EXPORTER_REPOSITORY = f"{PROJECT}/meter"
# The one list of what the exporter build reads from its context (the repository root): the root
# .dockerignore shuts everything out (`*`) and lets each input back in (`!pattern`); exporter/Dockerfile copies
# the admitted tree as it is, and the image tag hashes the same files.
DOCKERIGNORE = ".dockerignore"


def exporter_sources(root: Path = ROOT) -> tuple[str, ...]:
    """The patterns the build context admits, in the order .dockerignore lists them."""
    lines = (line.strip() for line in (root / DOCKERIGNORE).read_text().splitlines())
    return tuple(line[1:] for line in lines if line.startswith("!"))


def exporter_files(root: Path = ROOT) -> list[Path]:
    """The files of the exporter build, sorted, as found under `root`."""
    found: set[Path] = set()
    for pattern in exporter_sources(root):
        matches = sorted(root.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"exporter build input {pattern!r} not found under {root}")
        found.update(matches)
    return sorted(found)


def exporter_tag(base_image: str, root: Path = ROOT) -> str:
    """Content tag of the exporter image: the base image reference plus every build input, hashed."""
    digest = hashlib.sha256(base_image.encode())
    for path in exporter_files(root):
        digest.update(b"\0" + path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def pinned_image(name: str, reference: str, placement: Placement, parent: pulumi.Resource) -> docker.RemoteImage:
    """A registry image pulled onto the placement's host by its pinned `repository:tag@sha256:` reference."""
    return docker.RemoteImage(
        name,
        name=reference,
        keep_locally=True,
        opts=placement.resource_options(parent),
    )


def exporter_image_on(name: str, python_image: str, placement: Placement, parent: pulumi.Resource) -> docker.Image:
    """The metering exporter image on top of the pinned `python_image`, built on the placement's host."""
    # Paths relative to the working directory keep machine-specific absolute paths out of the state.
    context = os.path.relpath(ROOT, Path.cwd())
    return docker.Image(
        name,
        image_name=f"{EXPORTER_REPOSITORY}:{exporter_tag(python_image)}",
        build=docker.DockerBuildArgs(
            context=context,
            dockerfile=os.path.join(context, EXPORTER_DOCKERFILE),
            args={"PYTHON_IMAGE": python_image},
        ),
        skip_push=True,
        opts=placement.resource_options(parent),
    )
