"""The contract between a stack's config, the components that deploy it and the policy pack that judges it.

A policy sees only what the program registers, never the stack file. What it needs travels on the Docker
containers: labels `ollama-fleet.<key>`, and for the Ollama server's knobs the environment Ollama itself
reads, so a policy judges what the server will run. This module alone writes them (the components, the
loopback data plane) and reads them back (the policy pack, the tests) into the config's own types; nothing
else spells a key (`LABELS`, `OLLAMA_ENV`). Reading has no defaults of its own: a missing or garbled value is
a `ContractError` naming the label or variable and what is allowed.

Round trip (tests/policy/test_contract.py): `decode_node(labels, env) == NodeContract.of(settings, ...)` for
every stack and generated variations; the node's knobs come back as the node runs them (`running_group`:
OLLAMA_MAX_LOADED_MODELS and OLLAMA_CONTEXT_LENGTH resolved), which the capacity model sizes identically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, get_args

from pydantic import ValidationError

from fleet import capacity
from fleet.config import (
    FLEET_KEY,
    PROJECT,
    Environment,
    FleetSettings,
    ModelSpec,
    NodeGroup,
    OllamaSettings,
    Policy,
    TlsMode,
)


@dataclass(frozen=True)
class LabelKeys:
    """The Docker label keys of the contract (the one place they are spelled)."""

    role: str = f"{PROJECT}.role"
    environment: str = f"{PROJECT}.environment"
    publish_scope: str = f"{PROJECT}.publish-scope"
    # Ollama node
    node: str = f"{PROJECT}.node"
    node_group: str = f"{PROJECT}.node-group"
    node_group_index: str = f"{PROJECT}.node-group-index"
    node_count: str = f"{PROJECT}.node-count"
    instance_type: str = f"{PROJECT}.instance-type"
    models: str = f"{PROJECT}.models"
    model_volume_gb: str = f"{PROJECT}.model-volume-gb"
    root_volume_gb: str = f"{PROJECT}.root-volume-gb"
    vram_headroom: str = f"{PROJECT}.vram-headroom"
    host_memory: str = f"{PROJECT}.host-memory-bytes"  # a CPU node's RAM as declared; empty when undeclared
    ollama_image: str = f"{PROJECT}.ollama-image"
    # gateway
    tls_mode: str = f"{PROJECT}.tls-mode"
    upstream_max_conns: str = f"{PROJECT}.upstream-max-conns"
    queue_per_node: str = f"{PROJECT}.queue-per-node"
    admin_cidrs: str = f"{PROJECT}.admin-cidrs"
    # monitoring
    retention: str = f"{PROJECT}.retention"


# Read at call time everywhere (`contract.LABELS.models`), so the keys can change in this one place.
LABELS = LabelKeys()

# Container roles (`LABELS.role`).
ROLES = (
    "ollama",
    "meter",
    "gateway",
    "nginx-exporter",
    "gateway-log-exporter",
    "budget-controller",
    "prometheus",
    "alertmanager",
    "grafana",
    "node-exporter",
    "dcgm-exporter",
)

# Where a container's published ports may listen beyond loopback: nowhere (the local host), on the networks of
# the local host's bind address (`local.publishBeyondLoopback`), or under AWS security groups.
PUBLISH_SCOPES = ("loopback", "network", "security-groups")

# OllamaSettings field -> the environment variable Ollama reads it from (envconfig/config.go).
OLLAMA_ENV: dict[str, str] = {
    "num_parallel": "OLLAMA_NUM_PARALLEL",
    "max_queue": "OLLAMA_MAX_QUEUE",
    "max_loaded_models": "OLLAMA_MAX_LOADED_MODELS",
    "keep_alive": "OLLAMA_KEEP_ALIVE",
    "flash_attention": "OLLAMA_FLASH_ATTENTION",
    "kv_cache_type": "OLLAMA_KV_CACHE_TYPE",
    "context_length": "OLLAMA_CONTEXT_LENGTH",
    "gpu_overhead_bytes": "OLLAMA_GPU_OVERHEAD",
    "sched_spread": "OLLAMA_SCHED_SPREAD",
}
# Knobs a node may leave unset because the config leaves them to Ollama (its VRAM-tiered default context).
_OPTIONAL_ENV = {"context_length"}
_BOOL_KNOBS = {"flash_attention", "sched_spread"}
_INT_KNOBS = {"num_parallel", "max_queue", "max_loaded_models", "context_length", "gpu_overhead_bytes"}


class ContractError(ValueError):
    """A container's labels or environment do not say what the contract requires."""


# ---- reading Docker's shapes ------------------------------------------------------------------------------


def _items(value: Any) -> list[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [value[i] for i in range(len(value))]
    return []


def labels_of(props: Mapping[str, Any]) -> dict[str, str]:
    """A container's labels (`labels: [{label, value}]` as the Docker provider takes them) as a dict."""
    result: dict[str, str] = {}
    for item in _items(props.get("labels") if isinstance(props, Mapping) else None):
        if isinstance(item, Mapping) and "label" in item:
            value = item.get("value")
            result[str(item["label"])] = "" if value is None else str(value)
    return result


def env_of(props: Mapping[str, Any]) -> dict[str, str]:
    """A container's environment (`envs: ["KEY=value"]`) as a dict."""
    result: dict[str, str] = {}
    for entry in _items(props.get("envs") if isinstance(props, Mapping) else None):
        if isinstance(entry, str) and "=" in entry:
            key, value = entry.split("=", 1)
            result[key] = value
    return result


def repeated_keys(props: Mapping[str, Any]) -> list[str]:
    """Contract labels and variables a container gives more than once: Docker and Ollama may each read another of
    the copies than a policy would, so a container that repeats one says nothing for sure."""
    if not isinstance(props, Mapping):
        return []
    owned_labels = set(label_keys())
    owned_env = set(OLLAMA_ENV.values()) | GPU_VISIBILITY_ENV
    seen: set[str] = set()
    repeated: list[str] = []
    for item in _items(props.get("labels")):
        key = str(item.get("label")) if isinstance(item, Mapping) else None
        if key in owned_labels:
            if f"label {key}" in seen and f"label {key}" not in repeated:
                repeated.append(f"label {key}")
            seen.add(f"label {key}")
    for entry in _items(props.get("envs")):
        key = entry.split("=", 1)[0] if isinstance(entry, str) else None
        if key in owned_env:
            if key in seen and key not in repeated:
                repeated.append(key)
            seen.add(key)
    return repeated


def contract_labels_of(props: Mapping[str, Any]) -> dict[str, str]:
    """`labels_of`, refusing a container that repeats a contract label or variable (ContractError)."""
    repeated = repeated_keys(props)
    if repeated:
        raise ContractError(f"{', '.join(repeated)} given more than once; allowed: each once, as the program writes them")
    return labels_of(props)


def docker_labels(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Labels in the Docker provider's list shape (what a policy reads)."""
    return [{"label": key, "value": value} for key, value in values.items()]


def json_value(value: object) -> str:
    """A label value holding structured data: compact JSON with sorted keys, so it only changes with the data."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def role_of(labels: Mapping[str, str]) -> str | None:
    return labels.get(LABELS.role)


def declared_environment(labels: Mapping[str, str]) -> str | None:
    return labels.get(LABELS.environment)


# ---- every container -------------------------------------------------------------------------------------


def container_labels(settings: FleetSettings, role: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The labels of every fleet container: its role and the stack's environment, plus `extra`."""
    if role not in ROLES:
        raise ValueError(f"unknown container role {role!r}; roles: {', '.join(ROLES)}")
    return {
        LABELS.role: role,
        LABELS.environment: settings.environment,
        LABELS.publish_scope: publish_scope(settings),
        **(extra or {}),
    }


def publish_scope(settings: FleetSettings) -> str:
    if settings.target == "aws":
        return "security-groups"
    return "network" if settings.local.publish_beyond_loopback else "loopback"


def decode_publish_scope(labels: Mapping[str, str]) -> str:
    scope = _required(labels, LABELS.publish_scope)
    if scope not in PUBLISH_SCOPES:
        raise ContractError(f"label {LABELS.publish_scope}={scope!r}; allowed: {', '.join(PUBLISH_SCOPES)}")
    return scope


def environment_labels(settings: FleetSettings) -> dict[str, str]:
    """The label of networks and volumes: the stack's environment."""
    return {LABELS.environment: settings.environment}


def config_key(path: str) -> str:
    """The dotted key of a setting in the stack file (`ollama-fleet:fleet.gateway.adminCidrs`)."""
    return f"{FLEET_KEY}.{path}" if path else FLEET_KEY


# ---- Ollama nodes ----------------------------------------------------------------------------------------


def running_group(group: NodeGroup) -> NodeGroup:
    """The group as its nodes run it: OLLAMA_MAX_LOADED_MODELS and OLLAMA_CONTEXT_LENGTH as the node sets them
    (the config may leave them to be derived from the models)."""
    knobs = group.ollama.model_copy(
        update={"max_loaded_models": group.max_loaded_models, "context_length": capacity.context_length_env(group)}
    )
    return group.model_copy(update={"ollama": knobs})


def ollama_environment(group: NodeGroup) -> dict[str, str]:
    """The OLLAMA_* knobs of a node of `group`, as Ollama reads them; unset knobs are left out."""
    knobs = running_group(group).ollama
    env: dict[str, str] = {}
    for field, variable in OLLAMA_ENV.items():
        value = getattr(knobs, field)
        if value is None:
            continue
        env[variable] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env


@dataclass(frozen=True)
class NodeContract:
    """What an Ollama node's container carries: the group as the node runs it, where it sits in the stack
    file, the VRAM headroom the stack asks for, and the Ollama image."""

    group: NodeGroup
    group_index: int
    node: str
    headroom: float
    ollama_image: str
    host_memory: int | None = None  # bytes of RAM a CPU node may use (`local.memoryGib`); None: not declared

    @classmethod
    def of(cls, settings: FleetSettings, group: NodeGroup, node_index: int) -> "NodeContract":
        """The contract of node `node_index` of `group` (one of the stack's groups, found by name)."""
        names = [g.name for g in settings.node_groups]
        if group.name not in names:
            raise ValueError(f"node group {group.name!r} is not in the stack; groups: {', '.join(names)}")
        return cls(
            group=running_group(group),
            group_index=names.index(group.name),
            node=f"{group.name}-{node_index}",
            headroom=settings.policy.vram_headroom,
            ollama_image=settings.images.ollama,
            host_memory=capacity.host_memory(settings, group),
        )

    @property
    def ollama_version(self) -> str:
        """The Ollama release the node runs, from its image's tag (capacity.CapacityError when it has none, or
        one the capacity model has no rules for)."""
        version = capacity.version_of_image(self.ollama_image)
        capacity.rules_of(version)
        return version

    def labels(self) -> dict[str, str]:
        group = self.group
        return {
            LABELS.node: self.node,
            LABELS.node_group: group.name,
            LABELS.node_group_index: str(self.group_index),
            LABELS.node_count: str(group.count),
            LABELS.instance_type: group.instance_type,
            LABELS.models: models_value(group),
            LABELS.model_volume_gb: str(group.model_volume_gb),
            LABELS.root_volume_gb: str(group.root_volume_gb),
            LABELS.vram_headroom: repr(self.headroom),
            LABELS.ollama_image: self.ollama_image,
            LABELS.host_memory: "" if self.host_memory is None else str(self.host_memory),
        }

    def environment(self) -> dict[str, str]:
        return ollama_environment(self.group)

    def key(self, path: str = "") -> str:
        """The dotted stack-file key of this node's group, or of a setting inside it (`ollama.numParallel`)."""
        return config_key(f"nodeGroups[{self.group_index}]" + (f".{path}" if path else ""))

    def env_key(self, variable: str) -> str:
        """The stack-file key an OLLAMA_* variable comes from."""
        for field, name in OLLAMA_ENV.items():
            if name == variable:
                return self.key(f"ollama.{OllamaSettings.model_fields[field].alias or field}")
        raise KeyError(variable)


def models_value(group: NodeGroup) -> str:
    """The models label: every model spec of the group, as the stack file spells it."""
    return json_value([m.model_dump(mode="json", by_alias=True) for m in group.models])


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def _required(labels: Mapping[str, str], key: str) -> str:
    value = labels.get(key)
    if value is None or value.strip() == "":
        raise ContractError(f"label {key} is missing")
    return value


_WHOLE = re.compile(r"^[0-9]+$")


def _whole(value: str, where: str) -> int:
    # As Go's strconv.ParseUint(s, 10, 64), which Ollama uses: decimal digits only.
    if not _WHOLE.match(value):
        raise ContractError(f"{where}={value!r} is not a whole number")
    return int(value)


def ollama_var(value: str) -> str:
    """An environment value as Ollama reads it (envconfig.Var: surrounding spaces and quotes dropped)."""
    return value.strip().strip("\"'")


def ollama_bool(value: str) -> bool:
    """A set boolean variable as Ollama reads it (envconfig.BoolWithDefault: strconv.ParseBool, and any
    value it cannot parse counts as true)."""
    return value not in ("0", "f", "F", "false", "FALSE", "False")


# Variables an Ollama container may carry besides the knobs: where it listens and keeps its models (fleet.node_runtime).
NEUTRAL_ENV = frozenset({"OLLAMA_HOST", "OLLAMA_MODELS"})
# Variables that hide GPUs from Ollama (the CUDA and ROCm runtimes read them): the estimate places models on
# every GPU of the instance.
GPU_VISIBILITY_ENV = frozenset(
    {"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"}
)


def unsized_env(env: Mapping[str, str]) -> list[str]:
    """Variables of an Ollama container that change what it runs but that the contract does not carry (another
    OLLAMA_* setting such as OLLAMA_NEW_ENGINE or OLLAMA_LLM_LIBRARY, or one that hides GPUs)."""
    known = set(OLLAMA_ENV.values()) | NEUTRAL_ENV
    return sorted(k for k in env if (k.startswith("OLLAMA_") and k not in known) or k in GPU_VISIBILITY_ENV)


def decode_knobs(env: Mapping[str, str]) -> OllamaSettings:
    extra = unsized_env(env)
    if extra:
        raise ContractError(
            f"{', '.join(extra)} {'is' if len(extra) == 1 else 'are'} set; the capacity model does not size "
            f"{'it' if len(extra) == 1 else 'them'}; allowed: {', '.join(sorted(set(OLLAMA_ENV.values()) | NEUTRAL_ENV))}"
        )
    values: dict[str, Any] = {}
    for field, variable in OLLAMA_ENV.items():
        raw = env.get(variable)
        value = None if raw is None else ollama_var(raw)
        if not value:
            if field in _OPTIONAL_ENV:
                continue
            raise ContractError(f"{variable} is not set; Ollama would use its own default, which the policies cannot size")
        if field in _BOOL_KNOBS:
            values[field] = ollama_bool(value)
        elif field in _INT_KNOBS:
            values[field] = _whole(value, variable)
        else:
            values[field] = value
    try:
        return OllamaSettings.model_validate(values)
    except ValidationError as exc:
        names = {name: v for f, v in OLLAMA_ENV.items() for name in (f, OllamaSettings.model_fields[f].alias or f)}
        problems = []
        for error in exc.errors():
            loc = [str(p) for p in error["loc"]]
            variable = names.get(loc[0], loc[0]) if loc else "OLLAMA_*"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{variable}: {message}")
        raise ContractError("; ".join(problems)) from None


def decode_models(labels: Mapping[str, str]) -> list[ModelSpec]:
    key = LABELS.models
    try:
        entries = json.loads(_required(labels, key))
    except json.JSONDecodeError as exc:
        raise ContractError(f"label {key} is not JSON ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise ContractError(f"label {key} must be a non-empty JSON list of model specs (name, tag, quantization, …)")
    models = []
    for index, entry in enumerate(entries):
        try:
            models.append(ModelSpec.model_validate(entry))
        except ValidationError as exc:
            raise ContractError(f"label {key}[{index}]: {_problems(exc)}") from None
    return models


def _headroom(labels: Mapping[str, str]) -> float:
    key = LABELS.vram_headroom
    raw = _required(labels, key)
    try:
        return Policy.model_validate({"vramHeadroom": float(raw)}).vram_headroom
    except ValueError as exc:
        detail = _problems(exc) if isinstance(exc, ValidationError) else "not a number"
        raise ContractError(f"label {key}={raw!r}: {detail}") from None


def _host_memory(labels: Mapping[str, str]) -> int | None:
    """The RAM a CPU node may use (bytes), or None when the stack does not declare it (the label is empty)."""
    key = LABELS.host_memory
    if key not in labels:
        raise ContractError(f"label {key} is missing")
    raw = labels[key]
    if raw == "":
        return None
    value = _whole(raw, f"label {key}")
    if value <= 0:
        raise ContractError(f"label {key}={raw!r}: must be a positive number of bytes")
    return value


def decode_node(labels: Mapping[str, str], env: Mapping[str, str]) -> NodeContract:
    """Read an Ollama container's labels and environment back into the node's contract."""
    models = decode_models(labels)
    knobs = decode_knobs(env)
    index = _whole(_required(labels, LABELS.node_group_index), f"label {LABELS.node_group_index}")
    raw_group = {
        "name": (_required(labels, LABELS.node_group), LABELS.node_group),
        "instance_type": (_required(labels, LABELS.instance_type), LABELS.instance_type),
        "count": (_whole(_required(labels, LABELS.node_count), f"label {LABELS.node_count}"), LABELS.node_count),
        "model_volume_gb": (
            _whole(_required(labels, LABELS.model_volume_gb), f"label {LABELS.model_volume_gb}"),
            LABELS.model_volume_gb,
        ),
        "root_volume_gb": (
            _whole(_required(labels, LABELS.root_volume_gb), f"label {LABELS.root_volume_gb}"),
            LABELS.root_volume_gb,
        ),
    }
    try:
        group = NodeGroup.model_validate(
            {**{field: value for field, (value, _) in raw_group.items()}, "models": models, "ollama": knobs}
        )
    except ValidationError as exc:
        where = {name: key for f, (_, key) in raw_group.items() for name in (f, NodeGroup.model_fields[f].alias or f)}
        problems = []
        for error in exc.errors():
            first = str(error["loc"][0]) if error["loc"] else ""
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"label {where.get(first, LABELS.models)}: {message}")
        raise ContractError("; ".join(problems)) from None
    return NodeContract(
        group=group,
        group_index=index,
        node=_required(labels, LABELS.node),
        headroom=_headroom(labels),
        ollama_image=_required(labels, LABELS.ollama_image),
        host_memory=_host_memory(labels),
    )


# ---- gateway ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayContract:
    """What a gateway container carries: its TLS mode, the queue it allows per node, the max_conns it gives
    each node group, and the ranges the admin key works from."""

    tls_mode: str
    queue_per_node: int | dict[str, int]  # per group (one number: every group)
    max_conns: dict[str, int]
    admin_cidrs: tuple[str, ...]

    @classmethod
    def of(cls, settings: FleetSettings) -> "GatewayContract":
        gateway = settings.gateway
        return cls(
            tls_mode=gateway.tls.mode,
            queue_per_node={g.name: capacity.queue_per_node(g, gateway) for g in settings.node_groups},
            max_conns=upstream_max_conns(settings),
            admin_cidrs=tuple(gateway.admin_cidrs),
        )

    def labels(self) -> dict[str, str]:
        return {
            LABELS.tls_mode: self.tls_mode,
            LABELS.upstream_max_conns: json_value(self.max_conns),
            LABELS.queue_per_node: json_value(self.queue_per_node),
            LABELS.admin_cidrs: json_value(list(self.admin_cidrs)),
        }

    def queue_for(self, group: str) -> int | None:
        """The queue the gateway allows each node of `group` (None: the label names no queue for it)."""
        return self.queue_per_node if isinstance(self.queue_per_node, int) else self.queue_per_node.get(group)


def upstream_max_conns(settings: FleetSettings) -> dict[str, int]:
    """max_conns per node of each group, from the capacity model."""
    return {g.name: capacity.max_conns_per_node(g, capacity.queue_per_node(g, settings.gateway))
            for g in settings.node_groups}


def _queues(value: str) -> int | dict[str, int]:
    """The queue label: {group: queued requests per node}, or one number for every group."""
    key = LABELS.queue_per_node
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, int) and not isinstance(parsed, bool) and parsed >= 0:
        return parsed
    if isinstance(parsed, dict) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in parsed.values()):
        return parsed
    raise ContractError(f"label {key} must be a JSON object {{group: queued requests per node}} or one number")


def decode_gateway(labels: Mapping[str, str]) -> GatewayContract:
    """Read a gateway container's labels back into its contract."""
    mode = _required(labels, LABELS.tls_mode)
    if mode not in get_args(TlsMode):
        raise ContractError(f"label {LABELS.tls_mode}={mode!r}; allowed: {', '.join(get_args(TlsMode))}")
    queue = _queues(_required(labels, LABELS.queue_per_node))
    key = LABELS.upstream_max_conns
    try:
        conns = json.loads(_required(labels, key))
    except json.JSONDecodeError:
        conns = None
    if not isinstance(conns, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in conns.values()):
        raise ContractError(f"label {key} must be a JSON object {{group: max_conns per node}}")
    key = LABELS.admin_cidrs
    try:
        cidrs = json.loads(_required(labels, key))
    except json.JSONDecodeError:
        cidrs = None
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        raise ContractError(f"label {key} must be a JSON list of CIDR ranges")
    return GatewayContract(tls_mode=mode, queue_per_node=queue, max_conns=conns, admin_cidrs=tuple(cidrs))


def environment_names() -> tuple[str, ...]:
    return get_args(Environment)


def label_keys() -> list[str]:
    return [getattr(LABELS, f.name) for f in fields(LABELS)]
