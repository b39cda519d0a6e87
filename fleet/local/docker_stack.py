"""A stack's planned containers running on the project's own Docker daemon: capture, plan, replay.

`start()` captures what the program registers for the stack (fleet/local/docker_capture.py), builds the
replay's plan (fleet/local/docker_plan.py), builds or reuses the stand-in images (fleet/local/standins.py)
and replays the plan (fleet/local/docker_replay.py); the result knows where the stack's endpoints were
published and holds the secrets the program generated (API keys, Prometheus' password, the gateway's
certificate), as `pulumi stack output --show-secrets` would give them.

Grafana has no stand-in (it is not packaged for Debian): its container and image are left out of the
replay, and listed as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleet import ports
from fleet.local import docker_capture, docker_plan, docker_replay
from fleet.local.standins import WITHOUT_STANDIN

LEFT_OUT = {repository: "not packaged for Debian, so no stand-in image can be built" for repository in WITHOUT_STANDIN}


@dataclass
class DockerStack:
    replay: docker_replay.Replay
    outputs: dict[str, Any]  # the program's outputs, secret ones included
    settings: Any  # FleetSettings of the stack
    seconds: float = 0.0  # how long `start` took

    @property
    def plan(self) -> docker_plan.DockerPlan:
        return self.replay.plan

    def _one(self, role: str) -> docker_plan.Step:
        found = self.plan.containers(role)
        if len(found) != 1:
            raise docker_replay.ReplayError(f"the plan has {len(found)} containers with role {role}")
        return found[0]

    def _url(self, role: str, port: int, scheme: str = "http") -> str:
        address, published = self.replay.published(self._one(role).name, port)
        return f"{scheme}://{address}:{published}"

    @property
    def tls(self) -> bool:
        return self.settings.gateway.tls.mode != "off"

    @property
    def gateway_url(self) -> str:
        gateway = self.settings.gateway
        return self._url("gateway", gateway.https_port, "https") if self.tls else self.http_url

    @property
    def http_url(self) -> str:
        return self._url("gateway", self.settings.gateway.http_port)

    @property
    def prometheus_url(self) -> str | None:
        return self._url("prometheus", ports.PROMETHEUS) if self.plan.containers("prometheus") else None

    @property
    def alertmanager_url(self) -> str | None:
        return self._url("alertmanager", ports.ALERTMANAGER) if self.plan.containers("alertmanager") else None

    @property
    def client_keys(self) -> dict[str, str]:
        return dict(self.outputs.get("apiKeys") or {})

    @property
    def admin_key(self) -> str:
        return str(self.outputs["adminApiKey"])

    @property
    def prometheus_password(self) -> str:
        return str(self.outputs["prometheusPassword"])

    @property
    def certificate_pem(self) -> str | None:
        """The gateway's certificate as uploaded into nginx (self-signed: the CA its clients trust)."""
        from fleet.render.nginx import GatewayPaths

        if not self.tls:
            return None
        wanted = GatewayPaths().certificate
        for upload in self._one("gateway").resource.uploads:
            if upload.path == wanted:
                return upload.content.decode()
        raise docker_replay.ReplayError(f"the gateway container uploads no {wanted}")

    def down(self, volumes: str = "unretained") -> list[str]:
        return self.replay.down(volumes)


def start(
    client,
    docker_url: str,
    stack: str = "dev",
    images: dict[str, str] | None = None,
    log: Callable[[str], None] = lambda _: None,
    clear: str | None = None,
) -> DockerStack:
    """Replay `stack` on the daemon at `docker_url`. `images`: stand-in tags by repository (built when
    None). `clear`: first remove what an earlier replay of the stack left ("all" volumes too, "unretained",
    "none" to keep every volume); None refuses to start over a container of the plan that exists."""
    import time

    import docker

    from fleet.local.standins import build_all
    from fleet.stack_file import load_stack

    started = time.monotonic()
    capture = docker_capture.capture(stack)
    plan = docker_plan.build_plan(capture, LEFT_OUT)
    names = docker_replay.footprint(plan)
    if clear is not None:
        docker_replay.remove_footprint(client, names, clear)
    else:
        for name in names["containers"]:
            try:
                client.api.inspect_container(name)
            except docker.errors.NotFound:
                continue
            raise docker_replay.ReplayError(f"a container named {name} exists already (an earlier replay of {stack}?)")
    if images is None:
        log("building the stand-in images (once per machine)")
        images = build_all(client)
    replay = docker_replay.Replay(client, plan, images, docker_url, log=log)
    for left in plan.left_out:
        log(f"left out: {left.name} ({left.reason})")
    settings = load_stack(stack, docker_capture.ROOT).settings
    replay.up()
    return DockerStack(replay, capture["outputs"], settings, time.monotonic() - started)
