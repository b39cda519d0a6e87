"""Replay a stack's plan (fleet/local/docker_plan.py) on a real Docker daemon, through the Engine API.

Each step does what pulumi-docker and pulumi-command do for the resource on `pulumi up`:

* network, volume: created with the program's name, driver and labels;
* registry image: the program's `repository:tag@digest` reference resolved to its local stand-in
  (fleet/local/standins.py) — the one change the replay makes to what the program asked for;
* built image: `docker build` of the program's context, Dockerfile and build arguments, with any build
  argument that names a registry image mapped to its stand-in (the meter's `PYTHON_IMAGE`);
* container: created with the program's name, image, command, entrypoint, environment, user, labels,
  health check, mounts, network aliases, network and PID modes, restart policy, log settings and
  capabilities; the uploads written into it before it starts (a tar entry per file, owned by root, with
  the program's mode, as pulumi-docker writes them); started; with `wait`, waited for until Docker reports
  it healthy, within the program's `waitTimeout`;
* local command: the program's script run by /bin/sh with its environment and stdin, DOCKER_HOST pointing
  at this daemon (the provider's `host` is mapped the same way).

Steps run as soon as what they depend on is done, several at a time, as the Pulumi engine runs them.
Ports the program publishes are bound to free ports on the same address (never the stack's fixed ports,
which other runs on the machine may hold); `published()` says where each one went. `replace()` re-creates
one step and replaces what that changes (a container whose `container:<id>` mode names it, a command
whose triggers include its id), and nothing else: a command whose triggers did not change does not run.

Before the plan's containers, the model mirror (fleet/local/model_mirror.py) joins the plan's networks,
so that the model step's `ollama pull` finds the library under its own name.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from fleet.local import docker_plan as dp
from fleet.local.processes import free_port
from fleet.local.standins import repository_of

COMMAND_TIMEOUT_S = 1800
HEALTH_POLL_S = 1.0
LOG_TAIL = 30


class ReplayError(RuntimeError):
    pass


@dataclass
class Action:
    step: str
    what: str  # created, resolved, built, ran, removed
    seconds: float
    detail: str = ""


@dataclass
class _Applied:
    value: str  # a container's id, an image's id, a command's output
    refs: tuple[str, ...] = ()  # the values its Refs resolved to when it was applied


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _tail(text: str, lines: int = LOG_TAIL) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class Replay:
    client: object  # docker.DockerClient
    plan: dp.DockerPlan
    images: Mapping[str, str]  # registry repository -> stand-in tag
    docker_url: str  # what DOCKER_HOST is for the plan's commands
    publish_free_ports: bool = True
    workers: int = 4
    log: Callable[[str], None] = lambda _: None
    actions: list[Action] = field(default_factory=list)
    applied: dict[str, _Applied] = field(default_factory=dict)
    ports: dict[tuple[str, int, str], tuple[str, int]] = field(default_factory=dict)
    mirror: object | None = None  # the model mirror's container
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _build_locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)

    # ---- the whole plan -------------------------------------------------------------------------------

    def up(self) -> Replay:
        """Create every step of the plan; on a failure, raise after the steps in flight ended."""
        steps = {s.name: s for s in self.plan.steps}
        needs = {s.name: set(s.depends_on) | set(dp.refs_of(s.resource)) for s in self.plan.steps}
        done: set[str] = set()
        mirror_started = False
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="replay") as pool:
            running: dict[Future, str] = {}
            while len(done) < len(steps) and not failures:
                if not mirror_started and self._networks_done(done):
                    self._start_mirror()
                    mirror_started = True
                for name in sorted(n for n in steps if n not in done and n not in running.values()):
                    if needs[name] <= done and (mirror_started or not isinstance(steps[name].resource, (dp.Container, dp.Command))):
                        running[pool.submit(self.apply, steps[name])] = name
                if not running:
                    raise ReplayError(f"nothing can start: {sorted(set(steps) - done)} wait on each other")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    name = running.pop(future)
                    try:
                        future.result()
                        done.add(name)
                    except Exception as error:  # noqa: BLE001 (reported with the step's name below)
                        failures.append(f"{steps[name].kind} {name}: {error}")
            for future in list(running):
                name = running.pop(future)
                try:
                    future.result()
                except Exception as error:  # noqa: BLE001
                    failures.append(f"{steps[name].kind} {name}: {error}")
        if failures:
            raise ReplayError("\n".join(failures))
        return self

    def _networks_done(self, done: set[str]) -> bool:
        return all(s.name in done for s in self.plan.of_kind(dp.Network))

    def _start_mirror(self) -> None:
        from fleet.local import model_mirror

        if not self.plan.pulls:
            return
        python = self.images.get("python")
        if python is None:
            raise ReplayError("the model mirror runs in the python stand-in, which is not among the images")
        started = time.monotonic()
        networks = [s.resource.docker_name for s in self.plan.of_kind(dp.Network)]
        self.mirror = model_mirror.start(self.client, self.plan.stack, networks, python, self.plan.pulls, self.log)
        self._record(Action("model-mirror", "created", time.monotonic() - started, ", ".join(self.plan.pulls)))

    def replace(self, name: str) -> list[str]:
        """Remove and re-create step `name`, then replace every step whose inputs that changes (in plan
        order); the names replaced, `name` first."""
        replaced = [name]
        self.remove(name)
        self.apply(self.plan.step(name))
        for step in self.plan.steps:
            if step.name in replaced or step.name not in self.applied:
                continue
            refs = dp.refs_of(step.resource)
            if not set(refs) & set(replaced):
                continue
            if self._resolved_refs(step) == self.applied[step.name].refs:
                continue
            if isinstance(step.resource, dp.Container):
                self.remove(step.name)
            self.apply(step)
            replaced.append(step.name)
        return replaced

    def down(self, volumes: str = "unretained") -> list[str]:
        """Remove what the plan created and the model mirror (see `remove_footprint`)."""
        removed = remove_footprint(self.client, footprint(self.plan), volumes)
        with self._lock:
            self.applied.clear()
        self.mirror = None
        return removed

    # ---- one step -------------------------------------------------------------------------------------

    def apply(self, step: dp.Step) -> None:
        started = time.monotonic()
        resource = step.resource
        if isinstance(resource, dp.Network):
            value, what = self._network(resource), "created"
        elif isinstance(resource, dp.Volume):
            value, what = self._volume(resource), "created"
        elif isinstance(resource, dp.RegistryImage):
            value, what = self._registry_image(resource), "resolved"
        elif isinstance(resource, dp.BuiltImage):
            value, what = self._built_image(resource), "built"
        elif isinstance(resource, dp.Container):
            value, what = self._container(step.name, resource), "created"
        elif isinstance(resource, dp.Command):
            value, what = self._command(step.name, resource), "ran"
        else:  # pragma: no cover - the plan has no other kinds
            raise ReplayError(f"unknown step kind {step.kind}")
        refs = self._resolved_refs(step)
        with self._lock:
            self.applied[step.name] = _Applied(value, refs)
        seconds = time.monotonic() - started
        self._record(Action(step.name, what, seconds))
        self.log(f"{step.kind} {step.name}: {what} in {seconds:.1f}s")

    def remove(self, name: str) -> None:
        import docker

        step = self.plan.step(name)
        started = time.monotonic()
        if isinstance(step.resource, dp.Container):
            try:
                self.client.api.remove_container(step.resource.docker_name, force=True)
            except docker.errors.NotFound:
                pass
        with self._lock:
            self.applied.pop(name, None)
        self._record(Action(name, "removed", time.monotonic() - started))

    def _record(self, action: Action) -> None:
        with self._lock:
            self.actions.append(action)

    def resolve(self, value):
        """A plan value with its Ref resolved to what the referenced step produced."""
        if not isinstance(value, dp.Ref):
            return value
        applied = self.applied.get(value.step)
        if applied is None:
            raise ReplayError(f"{value.step} has not been created")
        return value.render(applied.value)

    def _resolved_refs(self, step: dp.Step) -> tuple[str, ...]:
        resource = step.resource
        if isinstance(resource, dp.Container):
            values = [resource.image, resource.network_mode, resource.pid_mode]
        elif isinstance(resource, dp.Command):
            values = list(resource.triggers)
        else:
            values = []
        return tuple(str(self.resolve(v)) for v in values if isinstance(v, dp.Ref))

    def _network(self, network: dp.Network) -> str:
        created = self.client.api.create_network(
            network.docker_name, driver=network.driver, labels=dict(network.labels), check_duplicate=True
        )
        return created["Id"]

    def _volume(self, volume: dp.Volume) -> str:
        return self.client.api.create_volume(volume.docker_name, labels=dict(volume.labels))["Name"]

    def _standin(self, reference: str) -> str:
        repository = repository_of(reference)
        tag = self.images.get(repository)
        if tag is None:
            raise ReplayError(f"{reference}: no stand-in image for {repository} (have: {', '.join(sorted(self.images))})")
        return tag

    def _registry_image(self, image: dp.RegistryImage) -> str:
        import docker

        tag = self._standin(image.reference)
        try:
            return self.client.images.get(tag).id
        except docker.errors.ImageNotFound:
            raise ReplayError(f"{image.reference}: its stand-in {tag} is not built on this daemon") from None

    def _built_image(self, image: dp.BuiltImage) -> str:
        from fleet.local.standins import StandinError, build

        args = {}
        for key, value in image.args.items():
            looks_like_image = "@sha256:" in value or ":" in value.split("/")[-1]
            args[key] = self._standin(value) if looks_like_image and repository_of(value) in self.images else value
        with self._lock:
            lock = self._build_locks.setdefault(image.image_name, threading.Lock())
        with lock:
            try:
                return build(self.client, str(image.context), image.image_name,
                             dockerfile=os.path.relpath(image.dockerfile, image.context), buildargs=args)
            except StandinError as error:
                raise ReplayError(str(error)) from None

    def published(self, step: str, internal: int, protocol: str = "tcp") -> tuple[str, int]:
        """Where the host reaches port `internal` of container step `step`: (address, port)."""
        return self.ports[(step, internal, protocol)]

    def _port_bindings(self, name: str, container: dp.Container) -> dict[str, tuple[str, int]]:
        bindings = {}
        for port in container.ports:
            key = (name, port.internal, port.protocol)
            if key not in self.ports:
                self.ports[key] = (port.ip, free_port(port.ip) if self.publish_free_ports else port.external)
            bindings[f"{port.internal}/{port.protocol}"] = self.ports[key]
        return bindings

    def _container(self, name: str, container: dp.Container) -> str:
        api = self.client.api
        network_mode = self.resolve(container.network_mode)
        first_network = container.networks[0] if container.networks else None
        host_config = api.create_host_config(
            binds=[f"{m.source}:{m.target}{':ro' if m.read_only else ''}" for m in container.mounts] or None,
            port_bindings=self._port_bindings(name, container) or None,
            restart_policy={"Name": container.restart} if container.restart and container.restart != "no" else None,
            log_config={"Type": container.log_driver, "Config": dict(container.log_opts)} if container.log_driver else None,
            network_mode=network_mode or (first_network[0] if first_network else None),
            pid_mode=self.resolve(container.pid_mode),
            cap_add=list(container.cap_add) or None,
            cap_drop=list(container.cap_drop) or None,
        )
        health = container.healthcheck
        healthcheck = None
        if health is not None:
            healthcheck = {
                "Test": list(health.test),
                "Interval": _ns(health.interval_s),
                "Timeout": _ns(health.timeout_s),
                "StartPeriod": _ns(health.start_period_s),
                "Retries": health.retries,
            }
        networking = None
        if first_network and not network_mode:
            networking = api.create_networking_config(
                {first_network[0]: api.create_endpoint_config(aliases=list(first_network[1]) or None)}
            )
        created = api.create_container(
            image=self.resolve(container.image),
            name=container.docker_name,
            command=list(container.command) if container.command is not None else None,
            entrypoint=list(container.entrypoint) if container.entrypoint is not None else None,
            environment=list(container.env) or None,
            user=container.user,
            labels=dict(container.labels),
            healthcheck=healthcheck,
            ports=[(p.internal, p.protocol) for p in container.ports] or None,
            host_config=host_config,
            networking_config=networking,
        )
        container_id = created["Id"]
        for network, aliases in container.networks[1:] if not network_mode else ():
            api.connect_container_to_network(container_id, network, aliases=list(aliases) or None)
        for upload in container.uploads:
            api.put_archive(container_id, "/", _tar(upload))
        api.start(container_id)
        if container.wait:
            self._wait_healthy(container, container_id)
        return container_id

    def _wait_healthy(self, container: dp.Container, container_id: str) -> None:
        if container.healthcheck is None:
            raise ReplayError("`wait` is set but the container has no health check (pulumi-docker refuses this too)")
        deadline = time.monotonic() + container.wait_timeout_s
        state: dict = {}
        while time.monotonic() < deadline:
            state = self.client.api.inspect_container(container_id)["State"]
            if (state.get("Health") or {}).get("Status") == "healthy":
                return
            time.sleep(HEALTH_POLL_S)
        raise ReplayError(
            f"{container.docker_name} not healthy within {container.wait_timeout_s:.0f}s "
            f"(status {state.get('Status')}, health {(state.get('Health') or {}).get('Status')})\n"
            f"{self.describe(container.docker_name)}"
        )

    def describe(self, docker_name: str) -> str:
        """A container's last health check outputs and log lines, for an error message."""
        import docker

        try:
            info = self.client.api.inspect_container(docker_name)
        except docker.errors.NotFound:
            return f"{docker_name}: no such container"
        checks = (info["State"].get("Health") or {}).get("Log") or []
        lines = [f"health check (exit {c.get('ExitCode')}): {_tail(c.get('Output') or '', 5)}" for c in checks[-3:]]
        logs = self.client.api.logs(docker_name, tail=LOG_TAIL).decode(errors="replace")
        return "\n".join([*lines, f"last log lines of {docker_name}:", _tail(logs)])

    def _command(self, name: str, command: dp.Command) -> str:
        env = {**os.environ, **command.environment}
        # The provider's daemon is this one: the scripts' docker CLI talks to it.
        env["DOCKER_HOST"] = self.docker_url
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", command.create], input=command.stdin, env=env, capture_output=True, text=True,
                timeout=COMMAND_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise ReplayError(f"did not end within {COMMAND_TIMEOUT_S}s") from None
        if proc.returncode != 0:
            raise ReplayError(f"exit {proc.returncode}: {_tail(proc.stderr or proc.stdout)}")
        return proc.stdout

    # ---- what ran -------------------------------------------------------------------------------------

    def ran(self, name: str) -> int:
        """How many times step `name` was applied (created, built, resolved or run)."""
        return sum(1 for a in self.actions if a.step == name and a.what != "removed")

    def output(self, name: str) -> str:
        return self.applied[name].value


def footprint(plan: dp.DockerPlan) -> dict:
    """The Docker names of what a replay of `plan` creates, dependents first (JSON-able, for a state file)."""
    from fleet.local.model_mirror import container_name

    steps = list(reversed(plan.steps))
    return {
        "containers": [s.resource.docker_name for s in steps if isinstance(s.resource, dp.Container)]
        + ([container_name(plan.stack)] if plan.pulls else []),
        "networks": [s.resource.docker_name for s in steps if isinstance(s.resource, dp.Network)],
        "volumes": {s.resource.docker_name: s.resource.retain_on_delete for s in steps if isinstance(s.resource, dp.Volume)},
    }


def remove_footprint(client, names: Mapping, volumes: str = "unretained") -> list[str]:
    """Remove containers, then networks, then volumes; what was there and is gone. `volumes`: "unretained"
    (as `pulumi destroy`: keep those the program retains on delete, the models), "all", or "none"."""
    import docker

    if volumes not in ("unretained", "all", "none"):
        raise ValueError(f"volumes={volumes!r}: one of unretained, all, none")
    removed = []
    api = client.api
    for name in names.get("containers", []):
        try:
            api.remove_container(name, force=True)
            removed.append(name)
        except docker.errors.NotFound:
            pass
    for name in names.get("networks", []):
        try:
            api.remove_network(name)
            removed.append(name)
        except docker.errors.NotFound:
            pass
    for name, retained in (names.get("volumes") or {}).items():
        if volumes == "none" or (volumes == "unretained" and retained):
            continue
        try:
            api.remove_volume(name, force=True)
            removed.append(name)
        except docker.errors.NotFound:
            pass
    return removed


def _tar(upload: dp.Upload) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(upload.path.lstrip("/"))
        info.size = len(upload.content)
        info.mode = upload.mode
        info.mtime = int(time.time())
        archive.addfile(info, io.BytesIO(upload.content))
    return buffer.getvalue()
