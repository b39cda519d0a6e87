"""The replay's plan: the Docker resources of a captured stack, as steps in dependency order (pure).

Input is a capture (`fleet.local.docker_capture`): every resource the program registered, with the inputs
`pulumi up` would send its provider. Each Docker resource (network, volume, registry image, built image,
container) and each local command becomes one step, its inputs translated field by field from
pulumi-docker's and pulumi-command's names, and its dependencies the ones the program declared (explicit
`depends_on` and the implicit ones of the Outputs it passed). Values that exist only once another resource
exists — the image a container runs, `container:<id>` network and PID modes, a command's trigger on a
container id — are `Ref`s to that step. Any input the translation does not know is an error naming the
resource and the key, so a program change that the replay would silently drop fails here.

Containers of registry images that have no local stand-in (`left_out`) are left out with their image,
and listed; a step that needs one of them is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
BUILT_IMAGE = "docker:index/image:Image"
CONTAINER = "docker:index/container:Container"
LOCAL_COMMAND = "command:local:Command"
DOCKER_PROVIDER = "pulumi:providers:docker"
# Resources that only exist away from a local Docker host.
REMOTE_TYPES = ("command:remote:", "aws:")
# Resources computed before the replay (their values are already in the inputs of what uses them).
COMPUTED_PREFIXES = ("random:", "tls:", "pulumi:providers:")


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class Ref:
    """A value known once step `step` ran: its `attribute` ("id" of a container, "image" to run), in `template`."""

    step: str
    attribute: str
    template: str = "{}"

    def render(self, value: str) -> str:
        return self.template.format(value)


@dataclass(frozen=True)
class Network:
    docker_name: str
    driver: str = "bridge"
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Volume:
    docker_name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    retain_on_delete: bool = False


@dataclass(frozen=True)
class RegistryImage:
    reference: str  # repository:tag@sha256:digest


@dataclass(frozen=True)
class BuiltImage:
    image_name: str
    context: Path
    dockerfile: Path
    args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HealthCheck:
    test: tuple[str, ...]
    interval_s: float
    timeout_s: float
    start_period_s: float
    retries: int


@dataclass(frozen=True)
class Port:
    internal: int
    external: int
    ip: str = "0.0.0.0"
    protocol: str = "tcp"


@dataclass(frozen=True)
class Mount:
    source: str  # a volume's Docker name, or a host path
    target: str
    read_only: bool = False

    @property
    def is_volume(self) -> bool:
        return not self.source.startswith("/")


@dataclass(frozen=True)
class Upload:
    path: str
    content: bytes
    mode: int


@dataclass(frozen=True)
class Container:
    docker_name: str
    image: Ref
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    healthcheck: HealthCheck | None = None
    ports: tuple[Port, ...] = ()
    mounts: tuple[Mount, ...] = ()
    networks: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (network's Docker name, aliases)
    network_mode: Ref | str | None = None
    pid_mode: Ref | str | None = None
    restart: str = "no"
    log_driver: str | None = None
    log_opts: Mapping[str, str] = field(default_factory=dict)
    uploads: tuple[Upload, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    wait: bool = False
    wait_timeout_s: float = 60.0

    @property
    def role(self) -> str | None:
        return self.labels.get("ollama-fleet.role")


@dataclass(frozen=True)
class Command:
    create: str
    environment: Mapping[str, str] = field(default_factory=dict)
    stdin: str | None = None
    triggers: tuple[str | Ref, ...] = ()


Resource = Network | Volume | RegistryImage | BuiltImage | Container | Command


@dataclass(frozen=True)
class Step:
    name: str  # the Pulumi resource name
    resource: Resource
    depends_on: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return type(self.resource).__name__.lower()


@dataclass(frozen=True)
class LeftOut:
    name: str
    reason: str


@dataclass(frozen=True)
class DockerPlan:
    stack: str
    steps: tuple[Step, ...]  # in an order where every step comes after its dependencies
    left_out: tuple[LeftOut, ...] = ()
    pulls: tuple[str, ...] = ()  # the Ollama library references the model steps pull
    docker_host: str | None = None  # the daemon the program's provider (and commands) address

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def of_kind(self, kind: type) -> list[Step]:
        return [s for s in self.steps if isinstance(s.resource, kind)]

    def containers(self, role: str | None = None) -> list[Step]:
        return [s for s in self.of_kind(Container) if role is None or s.resource.role == role]

    def dependents(self, name: str) -> list[str]:
        """Every step that depends on `name`, directly or not, in plan order."""
        found = {name}
        for step in self.steps:
            if found & set(step.depends_on) or found & set(refs_of(step.resource)):
                found.add(step.name)
        return [s.name for s in self.steps if s.name in found and s.name != name]


def refs_of(resource: Resource) -> list[str]:
    """The steps whose runtime values `resource` takes (its Refs): it needs them, and changes with them."""
    values: list[Any] = []
    if isinstance(resource, Container):
        values = [resource.image, resource.network_mode, resource.pid_mode]
    elif isinstance(resource, Command):
        values = list(resource.triggers)
    return [v.step for v in values if isinstance(v, Ref)]


# ---- translation of the recorded inputs ---------------------------------------------------------------------

_DURATION = re.compile(r"(?P<value>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_s(text: str, where: str) -> float:
    """A Go duration (`30s`, `1m30s`, `500ms`) in seconds."""
    parts = list(_DURATION.finditer(text or ""))
    if not parts or "".join(p.group(0) for p in parts) != text:
        raise PlanError(f"{where}: {text!r} is not a duration like 30s or 1m30s")
    return sum(float(p.group("value")) * _UNIT_S[p.group("unit")] for p in parts)


def _labels(items: Iterable[Mapping[str, Any]] | None) -> dict[str, str]:
    return {str(item["label"]): str(item["value"]) for item in items or []}


def _strings(values: Iterable[Any] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(str(v) for v in values)


def _check_keys(record: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    inputs = {k: v for k, v in (record.get("inputs") or {}).items() if v is not None}
    unknown = sorted(set(inputs) - known)
    if unknown:
        raise PlanError(
            f"{record['type']} {record['name']}: the replay does not translate input(s) {', '.join(unknown)}"
        )
    return inputs


_NETWORK_KEYS = {"name", "driver", "labels"}
_VOLUME_KEYS = {"name", "labels"}
_REMOTE_IMAGE_KEYS = {"name", "keepLocally"}
_BUILT_IMAGE_KEYS = {"imageName", "build", "skipPush", "buildOnPreview"}
_BUILD_KEYS = {"context", "dockerfile", "args"}
_CONTAINER_KEYS = {
    "name", "image", "command", "entrypoints", "envs", "user", "labels", "healthcheck", "ports", "volumes",
    "networksAdvanced", "networkMode", "pidMode", "restart", "logDriver", "logOpts", "uploads", "capabilities",
    "wait", "waitTimeout", "deviceRequests",
}
_COMMAND_KEYS = {"create", "environment", "stdin", "triggers"}


def _upload(item: Mapping[str, Any], where: str) -> Upload:
    """pulumi-docker's upload: `permissions` (octal) wins, else 0744 when `executable`, else 0644; owned by root."""
    content = item.get("content")
    if content is None and item.get("contentBase64") is not None:
        import base64

        data = base64.b64decode(item["contentBase64"])
    elif content is not None:
        data = str(content).encode()
    else:
        raise PlanError(f"{where}: upload {item.get('file')!r} has neither content nor contentBase64")
    if item.get("permissions"):
        try:
            mode = int(str(item["permissions"]), 8)
        except ValueError:
            raise PlanError(f"{where}: upload {item.get('file')!r} permissions {item['permissions']!r} is not octal") from None
    else:
        mode = 0o744 if item.get("executable") else 0o644
    return Upload(path=str(item["file"]), content=data, mode=mode)


class _Builder:
    def __init__(self, capture: Mapping[str, Any]):
        self.capture = capture
        self.root = Path(capture.get("root") or ".")
        records = list(capture["resources"])
        self.by_urn = {r["urn"]: r for r in records}
        self.records = records
        # The runtime values other resources pass around, as the mock cloud gave them out.
        self.values: dict[str, Ref] = {}
        for r in records:
            if r["type"] in (REMOTE_IMAGE, BUILT_IMAGE):
                outputs = r.get("outputs") or {}
                for key in ("imageId", "repoDigest"):
                    if outputs.get(key):
                        self.values[str(outputs[key])] = Ref(r["name"], "image")
            elif r["type"] == CONTAINER and r.get("id"):
                self.values[str(r["id"])] = Ref(r["name"], "id")
        self.children: dict[str, list[str]] = {}
        for r in records:
            if r.get("parent"):
                self.children.setdefault(r["parent"], []).append(r["urn"])

    def ref(self, value: Any, attribute: str, where: str, prefix: str = "") -> Ref:
        text = str(value)
        if prefix:
            if not text.startswith(prefix):
                raise PlanError(f"{where}: {text!r} does not start with {prefix!r}")
            text = text[len(prefix):]
        ref = self.values.get(text)
        if ref is None or ref.attribute != attribute:
            raise PlanError(f"{where}: {value!r} is not the {attribute} of a resource of the plan")
        return Ref(ref.step, attribute, prefix + "{}")

    def mode(self, value: Any, where: str) -> Ref | str | None:
        if value in (None, ""):
            return None
        if str(value).startswith("container:"):
            return self.ref(value, "id", where, prefix="container:")
        return str(value)

    def customs_under(self, urn: str) -> list[str]:
        record = self.by_urn.get(urn)
        if record is None:
            return []
        if record["custom"]:
            return [urn]
        found: list[str] = []
        for child in self.children.get(urn, []):
            found += self.customs_under(child)
        return found

    # -- one resource -----------------------------------------------------------------------------------

    def translate(self, r: Mapping[str, Any]) -> Resource | None:
        type_, where = r["type"], f"{r['type']} {r['name']}"
        if type_ == NETWORK:
            inputs = _check_keys(r, _NETWORK_KEYS)
            return Network(str(inputs.get("name") or r["name"]), str(inputs.get("driver") or "bridge"), _labels(inputs.get("labels")))
        if type_ == VOLUME:
            inputs = _check_keys(r, _VOLUME_KEYS)
            return Volume(str(inputs.get("name") or r["name"]), _labels(inputs.get("labels")), bool(r.get("retainOnDelete")))
        if type_ == REMOTE_IMAGE:
            inputs = _check_keys(r, _REMOTE_IMAGE_KEYS)
            return RegistryImage(str(inputs["name"]))
        if type_ == BUILT_IMAGE:
            inputs = _check_keys(r, _BUILT_IMAGE_KEYS)
            build = inputs.get("build") or {}
            unknown = sorted(set(k for k, v in build.items() if v is not None) - _BUILD_KEYS)
            if unknown:
                raise PlanError(f"{where}: the replay does not translate build input(s) {', '.join(unknown)}")
            context = (self.root / str(build.get("context") or ".")).resolve()
            dockerfile = (self.root / str(build.get("dockerfile") or Path(context) / "Dockerfile")).resolve()
            return BuiltImage(str(inputs["imageName"]), context, dockerfile, {str(k): str(v) for k, v in (build.get("args") or {}).items()})
        if type_ == CONTAINER:
            return self.container(r, where)
        if type_ == LOCAL_COMMAND:
            inputs = _check_keys(r, _COMMAND_KEYS)
            triggers = tuple(
                self.values[str(t)] if str(t) in self.values and self.values[str(t)].attribute == "id" else str(t)
                for t in inputs.get("triggers") or []
            )
            return Command(
                create=str(inputs["create"]),
                environment={str(k): str(v) for k, v in (inputs.get("environment") or {}).items()},
                stdin=None if inputs.get("stdin") is None else str(inputs["stdin"]),
                triggers=triggers,
            )
        if type_.startswith(REMOTE_TYPES):
            raise PlanError(f"{where}: the replay runs the stacks of a local Docker host (target: local) only")
        if type_.startswith(COMPUTED_PREFIXES) or not r["custom"]:
            return None
        raise PlanError(f"{where}: the replay does not know resources of type {type_}")

    def container(self, r: Mapping[str, Any], where: str) -> Container:
        inputs = _check_keys(r, _CONTAINER_KEYS)
        if inputs.get("deviceRequests"):
            raise PlanError(f"{where}: asks for devices ({inputs['deviceRequests']}); the replay runs CPU containers only")
        health = inputs.get("healthcheck")
        healthcheck = None
        if health:
            healthcheck = HealthCheck(
                test=tuple(str(t) for t in health["tests"]),
                interval_s=duration_s(health.get("interval", "30s"), f"{where} healthcheck.interval"),
                timeout_s=duration_s(health.get("timeout", "30s"), f"{where} healthcheck.timeout"),
                start_period_s=duration_s(health.get("startPeriod", "0s"), f"{where} healthcheck.startPeriod"),
                retries=int(health.get("retries", 3)),
            )
        mounts = []
        for item in inputs.get("volumes") or []:
            source = item.get("volumeName") or item.get("hostPath")
            if not source or not item.get("containerPath"):
                raise PlanError(f"{where}: volume {item} needs volumeName or hostPath, and containerPath")
            mounts.append(Mount(str(source), str(item["containerPath"]), bool(item.get("readOnly"))))
        capabilities = inputs.get("capabilities") or {}
        return Container(
            docker_name=str(inputs.get("name") or r["name"]),
            image=self.ref(inputs["image"], "image", f"{where} image"),
            command=_strings(inputs.get("command")),
            entrypoint=_strings(inputs.get("entrypoints")),
            env=tuple(str(e) for e in inputs.get("envs") or []),
            user=None if inputs.get("user") in (None, "") else str(inputs["user"]),
            labels=_labels(inputs.get("labels")),
            healthcheck=healthcheck,
            ports=tuple(
                Port(int(p["internal"]), int(p.get("external") or p["internal"]), str(p.get("ip") or "0.0.0.0"),
                     str(p.get("protocol") or "tcp"))
                for p in inputs.get("ports") or []
            ),
            mounts=tuple(mounts),
            networks=tuple(
                (str(n["name"]), tuple(str(a) for a in n.get("aliases") or [])) for n in inputs.get("networksAdvanced") or []
            ),
            network_mode=self.mode(inputs.get("networkMode"), f"{where} networkMode"),
            pid_mode=self.mode(inputs.get("pidMode"), f"{where} pidMode"),
            restart=str(inputs.get("restart") or "no"),
            log_driver=None if not inputs.get("logDriver") else str(inputs["logDriver"]),
            log_opts={str(k): str(v) for k, v in (inputs.get("logOpts") or {}).items()},
            uploads=tuple(_upload(u, where) for u in inputs.get("uploads") or []),
            cap_add=tuple(str(c) for c in capabilities.get("adds") or []),
            cap_drop=tuple(str(c) for c in capabilities.get("drops") or []),
            wait=bool(inputs.get("wait")),
            wait_timeout_s=float(inputs.get("waitTimeout") or 60),
        )


def _order(steps: dict[str, Step]) -> list[Step]:
    """Dependencies first; ties in name order, so one capture always gives one plan."""
    remaining = {name: set(step.depends_on) | set(refs_of(step.resource)) for name, step in steps.items()}
    ordered: list[Step] = []
    while remaining:
        ready = sorted(name for name, needs in remaining.items() if not needs)
        if not ready:
            raise PlanError(f"the steps {', '.join(sorted(remaining))} depend on each other in a cycle")
        for name in ready:
            ordered.append(steps[name])
            del remaining[name]
        for needs in remaining.values():
            needs.difference_update(ready)
    return ordered


def build_plan(capture: Mapping[str, Any], left_out: Mapping[str, str] | None = None) -> DockerPlan:
    """The plan of a capture. `left_out`: registry repository -> why its containers cannot run here."""
    from fleet.local.standins import repository_of

    left_out = dict(left_out or {})
    builder = _Builder(capture)
    translated: dict[str, tuple[Mapping[str, Any], Resource]] = {}
    docker_host = None
    for record in builder.records:
        if record["type"] == DOCKER_PROVIDER:
            docker_host = (record.get("inputs") or {}).get("host") or docker_host
        resource = builder.translate(record)
        if resource is not None:
            translated[record["urn"]] = (record, resource)
    names = {urn: record["name"] for urn, (record, _) in translated.items()}
    if len(set(names.values())) != len(names):
        raise PlanError("two replayed resources share a name")

    dropped: dict[str, str] = {}
    for urn, (record, resource) in translated.items():
        if isinstance(resource, RegistryImage) and repository_of(resource.reference) in left_out:
            dropped[record["name"]] = f"{resource.reference}: {left_out[repository_of(resource.reference)]}"
    for urn, (record, resource) in translated.items():
        if isinstance(resource, Container) and resource.image.step in dropped:
            dropped[record["name"]] = f"runs {dropped[resource.image.step]}"

    steps: dict[str, Step] = {}
    for urn, (record, resource) in translated.items():
        if record["name"] in dropped:
            continue
        depends: set[str] = set()
        for dependency in record.get("dependsOn") or []:
            for custom in builder.customs_under(dependency):
                if custom in names:
                    depends.add(names[custom])
        needed = sorted((depends | set(refs_of(resource))) & set(dropped))
        if needed:
            raise PlanError(f"{record['type']} {record['name']} needs {', '.join(needed)}, which cannot run here")
        steps[record["name"]] = Step(record["name"], resource, tuple(sorted(depends - {record["name"]})))
    return DockerPlan(
        stack=str(capture.get("stack")),
        steps=tuple(_order(steps)),
        left_out=tuple(LeftOut(name, reason) for name, reason in sorted(dropped.items())),
        pulls=tuple(capture.get("pulls") or ()),
        docker_host=docker_host,
    )
