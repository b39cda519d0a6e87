"""`fleet local up --engine docker`, and what `down` and `status` do for it: the stack's planned containers on
the project's own Docker daemon (fleet/local/docker_stack.py), as `pulumi up` would create them on a
Docker host, with stand-in images (Grafana left out: it has no stand-in).

The daemon is fleet/local/dockerd.py's (its own socket and data root, in the build cache): `up` starts it
unless it runs already, and `down` stops it again if `up` started it. The state file is the process
engine's, with `engine: docker` and the names of what the replay created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from fleet.cli.errors import EXIT_CONFIG, EXIT_FAILED
from fleet.cli.errors import fail as _fail

ENGINE = "docker"


def up(stack: str, state_dir: Path, state_path: Path, down_command: str, console: Console, err: Console) -> None:
    from fleet.local import dataplane as dp
    from fleet.local import docker_replay, docker_stack
    from fleet.local.docker_capture import CaptureError
    from fleet.local.docker_plan import PlanError
    from fleet.local.dockerd import Dockerd, DockerdError
    from fleet.local.model_mirror import MirrorError
    from fleet.local.standins import StandinError
    from fleet.stack_file import StackConfigError, load_stack

    try:
        load_stack(stack)
    except StackConfigError as error:
        _fail(str(error), EXIT_CONFIG)
    daemon = Dockerd()
    started_daemon = False
    if not daemon.is_up():
        err.print(f"starting the project's Docker daemon ({daemon.url}, data in {daemon.data_root})")
        try:
            daemon.start()
        except DockerdError as error:
            _fail(str(error))
        started_daemon = True
    client = daemon.client()
    run_dir = state_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        replayed = docker_stack.start(client, daemon.url, stack, log=lambda message: err.print(message, markup=False))
    except (docker_replay.ReplayError, PlanError, CaptureError, StandinError, MirrorError) as error:
        _clean_up_after_failure(client, stack, daemon, started_daemon)
        _fail(f"the replay of stack {stack} failed: {error}",
              hint="what it had created is removed again (the models volume stays)")
    except KeyboardInterrupt:
        _clean_up_after_failure(client, stack, daemon, started_daemon)
        raise
    state = _state(replayed, stack, run_dir, daemon.url, started_daemon)
    dp.write_state(state_path, state)
    _print(replayed, state, down_command, console)


def _clean_up_after_failure(client, stack: str, daemon, started_daemon: bool) -> None:
    """Remove what a failed replay created (nothing, when the capture or the plan failed)."""
    from fleet.local import docker_capture, docker_plan, docker_replay, docker_stack

    try:
        plan = docker_plan.build_plan(docker_capture.capture(stack), docker_stack.LEFT_OUT)
        docker_replay.remove_footprint(client, docker_replay.footprint(plan), "unretained")
    except (docker_capture.CaptureError, docker_plan.PlanError):
        pass
    finally:
        if started_daemon:
            daemon.stop()


def _state(replayed, stack: str, run_dir: Path, docker_url: str, started_daemon: bool) -> dict[str, Any]:
    from fleet.local import dataplane as dp
    from fleet.local.docker_replay import footprint
    from fleet.render.prometheus_web import PROMETHEUS_USER

    ca_file = None
    if replayed.certificate_pem:
        ca_file = run_dir / "gateway-ca.pem"
        ca_file.write_text(replayed.certificate_pem)
    return {
        "version": dp.STATE_VERSION,
        "engine": ENGINE,
        "stack": stack,
        "run_dir": str(run_dir),
        "gateway_url": replayed.gateway_url,
        "http_url": replayed.http_url,
        "prometheus_url": replayed.prometheus_url,
        "prometheus_user": PROMETHEUS_USER if replayed.prometheus_url else None,
        "prometheus_password": replayed.prometheus_password if replayed.prometheus_url else None,
        "alertmanager_url": replayed.alertmanager_url,
        "ca_file": str(ca_file) if ca_file else None,
        "client_keys": replayed.client_keys,
        "admin_key": replayed.admin_key,
        "processes": [],
        "docker": {
            "url": docker_url,
            "started_daemon": started_daemon,
            "footprint": footprint(replayed.plan),
            "left_out": [f"{left.name}: {left.reason}" for left in replayed.plan.left_out],
            "seconds": round(replayed.seconds, 1),
        },
    }


def _print(replayed, state: dict[str, Any], down_command: str, console: Console) -> None:
    console.print(f"gateway      {state['gateway_url']}   (health: {state['http_url']}/health)")
    if state["ca_file"]:
        console.print(f"certificate  {state['ca_file']}   (self-signed: pass it as the CA, e.g. curl --cacert)")
    if state["prometheus_url"]:
        console.print(f"prometheus   {state['prometheus_url']}   (basic auth, user {state['prometheus_user']}; "
                      "`fleet local env` exports the password)")
    if state["alertmanager_url"]:
        console.print(f"alertmanager {state['alertmanager_url']}")
    for step in replayed.plan.containers():
        console.print(f"container    {step.resource.docker_name} ({step.resource.role})")
    for left in state["docker"]["left_out"]:
        console.print(f"left out     {left}")
    console.print(f"replayed in {state['docker']['seconds']:.0f}s on {state['docker']['url']} "
                  f"(docker -H {state['docker']['url']} ps)")
    console.print("API keys, generated at every `up` (also in the state file, mode 0600):")
    for name, key in state["client_keys"].items():
        console.print(f"  client {name}: {key}")
    console.print(f"  admin: {state['admin_key']}")
    model = replayed.settings.node_groups[0].models[0].ref
    cacert = f"--cacert {state['ca_file']} " if state["ca_file"] else ""
    first = next(iter(state["client_keys"]))
    console.print(f"try:  curl {cacert}-H 'Authorization: Bearer {state['client_keys'][first]}' "
                  f"{state['gateway_url']}/api/generate -d '{{\"model\":\"{model}\",\"prompt\":\"Hello\"}}'")
    console.print(f"stop with: {down_command}")


def _client(state: dict[str, Any]):
    """A client of the recorded daemon, or None when it does not run."""
    from fleet.local.dockerd import Dockerd

    daemon = Dockerd()
    if state["docker"]["url"] != daemon.url or not daemon.is_up():
        return None
    return daemon.client()


def running(state: dict[str, Any]) -> list[str]:
    """The recorded containers that run."""
    import docker

    client = _client(state)
    if client is None:
        return []
    names = []
    for name in state["docker"]["footprint"]["containers"]:
        try:
            if client.api.inspect_container(name)["State"]["Running"]:
                names.append(name)
        except docker.errors.NotFound:
            continue
    return names


def down(state: dict[str, Any], console: Console) -> None:
    from fleet.local.docker_replay import remove_footprint
    from fleet.local.dockerd import Dockerd

    client = _client(state)
    removed = [] if client is None else remove_footprint(client, state["docker"]["footprint"], "unretained")
    kept = [name for name, retained in state["docker"]["footprint"]["volumes"].items() if retained]
    stopped = state["docker"]["started_daemon"] and client is not None and Dockerd().stop_running()
    console.print(
        f"removed {len(removed)} containers, networks and volumes"
        + (f"; kept volume {', '.join(kept)} (retained on delete, as `pulumi destroy` keeps it)" if kept else "")
        + ("; stopped the Docker daemon" if stopped else "")
    )


def status(state: dict[str, Any], console: Console) -> int:
    import docker

    client = _client(state)
    if client is None:
        console.print(f"the Docker daemon at {state['docker']['url']} does not run")
        return EXIT_FAILED
    up_count = 0
    for name in state["docker"]["footprint"]["containers"]:
        try:
            info = client.api.inspect_container(name)["State"]
        except docker.errors.NotFound:
            console.print(f"{'missing':9} {name}")
            continue
        health = (info.get("Health") or {}).get("Status")
        up_count += bool(info["Running"])
        console.print(f"{info['Status']:9} {name}" + (f" ({health})" if health else ""))
    console.print(f"gateway {state['gateway_url']}" + (f", prometheus {state['prometheus_url']}" if state["prometheus_url"] else ""))
    return 0 if up_count else EXIT_FAILED
