"""Every file the program puts on its hosts, for `fleet render` and review: taken from the resources the real
program registers when it runs under Pulumi's mocks (the offline preview), so the bundle is what a deployment
writes, for every topology (two gateways with high availability, every node group, every host's setup script).

Addresses, ids and volume ids are the preview's stand-ins for values known only after deployment. Secrets are
never part of a bundle: uploads Pulumi holds as secret, the gateway's API-key include, certificate and key, and
the hosts' user data (it carries their SSH host keys; the setup script inside it is included on its own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fleet.config import FleetSettings
from fleet.render.nginx import GatewayPaths
from fleet.resources import RegisteredResource

CONTAINER = "docker:index/container:Container"
GPU_HOST = "ollama-fleet:index:GpuHost"
README = "README.md"

_PATHS = GatewayPaths()
# Files of the gateway that are secret whatever the upload says (Pulumi marks a whole upload list secret as
# soon as one item is, so the plain items travel in a secret list).
SECRET_FILES = frozenset({_PATHS.api_keys_include, _PATHS.certificate, _PATHS.certificate_key})


def _is_secret(value: Any) -> bool:
    from pulumi.runtime.rpc import is_rpc_secret

    return bool(is_rpc_secret(value))


def _plain(value: Any) -> Any:
    """The value inside a secret wrapper (the caller decides what may be shown)."""
    return value["value"] if _is_secret(value) else value


def stand_ins(settings: FleetSettings) -> dict[str, str]:
    """Reviewable content for uploads that are secret only for the secrets they hold: Alertmanager's config, with
    placeholders where the receivers' secrets go."""
    from fleet.render import alertmanager

    return {alertmanager.CONFIG_PATH: alertmanager.render_alertmanager(settings, alertmanager.placeholder_secrets(settings))}


def program_files(resources: Iterable[RegisteredResource], reviewable: Mapping[str, str] | None = None) -> dict[str, str]:
    """Relative path -> content of every file the program uploads into a container
    (`<container>/<path in the container>`) and every host's first-boot script (`cloud-init/<host>-setup.sh`).
    A secret upload is left out, or shown as its `reviewable` stand-in (by path; see `stand_ins`)."""
    files: dict[str, str] = {}
    reviewable = reviewable or {}
    for resource in resources:
        if resource.type == CONTAINER:
            for upload in _plain(resource.inputs.get("uploads")) or []:
                if _is_secret(upload) or not isinstance(upload, dict):
                    continue
                path, content = upload.get("file"), upload.get("content")
                if path in SECRET_FILES:
                    continue
                if _is_secret(content):
                    content = reviewable.get(str(path))
                if not isinstance(content, str):
                    continue
                files[f"{resource.name}/{str(path).lstrip('/')}"] = content
        elif resource.type == GPU_HOST:
            script = resource.outputs.get("setupScript")
            if isinstance(script, str) and not _is_secret(script):
                files[f"cloud-init/{resource.name}-setup.sh"] = script
    if files:
        files[README] = _readme(sorted(files))
    return files


def _readme(paths: Iterable[str]) -> str:
    lines = [
        "# Rendered configuration",
        "",
        "Written by `fleet render` from the resources the program registers under Pulumi's mocks (the offline",
        "preview): the files a deployment uploads into each container (`<container>/<path>`) and each host's",
        "first-boot script. Addresses, ids and volume ids are the preview's stand-ins for values known only",
        "after deployment.",
        "Not included, because they are secret: the API-key include of nginx, TLS keys, the hosts' user data;",
        "the alert receivers' secrets are placeholders (`secret.invalid` URLs, `<secret …>` strings).",
        "",
        "Files:",
        "",
    ]
    lines += [f"- `{path}`" for path in paths]
    return "\n".join(lines) + "\n"


def write_bundle(files: Mapping[str, str], out: Path) -> list[Path]:
    """Write the files under `out` (created if needed); returns the written paths."""
    written = []
    root = out.resolve()
    for relative, content in sorted(files.items()):
        target = (root / relative).resolve()
        if root not in target.parents:
            raise ValueError(f"bundle path {relative!r} leaves the output folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        written.append(target)
    return written
