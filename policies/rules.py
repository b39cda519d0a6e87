"""The ollama-fleet policies: checks on the resources a stack registers, reusing `fleet.capacity` for VRAM.

Imported as `policies.rules` by the offline preview (`fleet.preview.policy_runner`) and as `rules` by `__main__.py`
when the Pulumi CLI runs the pack from this folder; it therefore imports only `fleet.*` absolutely.

Every policy reads what the program registers (inputs, camelCase, as the engine sends them to a policy
pack): Docker containers (`docker:index/container:Container`: `labels` as `[{label, value}]`, `envs` as
`KEY=value`, `image`, `uploads`, `ports`), Docker images (`docker:index/remoteImage:RemoteImage` `name`),
EC2 instances, EBS volumes and security groups and their rules. What the policies need from the stack's
config travels on the containers as `fleet.contract` writes it, and is read back only through
`fleet.contract`: the policies have no defaults of their own, and a missing or garbled label is a refusal.
Every refusal names the stack file (from the resource's URN: the stack the engine runs), the dotted key and
what is allowed. Values unknown during a preview raise `UnknownValueError` when read, which the engine
reports as "can't run during preview" instead of passing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError

from fleet import address_ranges, capacity, catalog, contract, ollama_rules, ports
from fleet.contract import ContractError, NodeContract
from fleet.gateway_routes import ADMIN_PREFIXES, ADMIN_ROUTES
from fleet.stack_names import environment_of_stack

PACK_NAME = "ollama-fleet"
# Without a policy config file every policy blocks; policies/config.dev.json relaxes dev to advisory.
PACK_ENFORCEMENT = EnforcementLevel.MANDATORY

CONTAINER = "docker:index/container:Container"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
EBS_VOLUME = "aws:ebs/volume:Volume"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SG_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
NETWORK_INTERFACE = "aws:ec2/networkInterface:NetworkInterface"
SG_ATTACHMENT = "aws:ec2/networkInterfaceSecurityGroupAttachment:NetworkInterfaceSecurityGroupAttachment"

# Relative GGUF paths in a stack file are relative to the project (where Pulumi runs the program).
PROJECT_ROOT = Path(catalog.__file__).resolve().parent.parent

# Paths the gateway must close to client keys: every admin route, and one blob under the admin prefix.
ADMIN_PATHS = ADMIN_ROUTES + tuple(prefix + "sha256:0" for prefix in ADMIN_PREFIXES)

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


# ------------------------------------------------------------------------------------ reading props


def _get(props: Mapping[str, Any] | None, *path: Any, default: Any = None) -> Any:
    """props[path...] or `default` when a key is missing; unknown values still raise (preview guard)."""
    value: Any = props
    for key in path:
        if isinstance(value, Mapping):
            if key not in value:
                return default
            value = value[key]
        elif isinstance(value, Sequence) and not isinstance(value, str) and isinstance(key, int):
            if key >= len(value):
                return default
            value = value[key]
        else:
            return default
    return default if value is None else value


def _items(value: Any) -> list[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [value[i] for i in range(len(value))]
    return []


def labels(props: Mapping[str, Any]) -> dict[str, str]:
    return contract.labels_of(props)


def envs(props: Mapping[str, Any]) -> dict[str, str]:
    return contract.env_of(props)


def role(props: Mapping[str, Any]) -> str | None:
    return contract.role_of(labels(props))


def _int(value: Any, default: int | None = None) -> int | None:
    """An integer from a protobuf number (which arrives as a float: 11435.0)."""
    if value is None or value == "" or isinstance(value, bool):
        return default
    try:
        number = float(str(value).strip())
    except ValueError:
        return default
    return int(number) if number.is_integer() else default


def stack_of(urn: str) -> str:
    """The stack a resource belongs to, from its URN (`urn:pulumi:<stack>::<project>::<type>::<name>`): the
    stack the engine runs, whatever the stack file says about itself."""
    head = urn.split("::", 1)[0]
    parts = head.split(":", 2)
    return parts[2] if len(parts) == 3 else ""


def stack_file(urn: str) -> str:
    return f"Pulumi.{stack_of(urn) or '<stack>'}.yaml"


def environment(urn: str, declared: str | None) -> str | None:
    """The environment whose rules apply: the one the stack's name decides, else what the containers declare."""
    return environment_of_stack(stack_of(urn)) or declared


def node_of(props: Mapping[str, Any]) -> NodeContract:
    """The node an Ollama container runs, read back through the contract (ContractError when it cannot be)."""
    return contract.decode_node(contract.contract_labels_of(props), envs(props))


def _ollama_container(args: ResourceValidationArgs) -> bool:
    return args.resource_type == CONTAINER and role(args.props) == "ollama"


def _cannot_check(what: str, urn: str, name: str, exc: Exception) -> str:
    return (
        f"{stack_file(urn)}: cannot check {what} for {name}: {exc}. The program writes these labels and variables "
        "through fleet.contract; deploy what it registers"
    )


# ----------------------------------------------------------------------------------------- vram-fit


def _headroom(config: Mapping[str, Any], label_headroom: float) -> float:
    floor = config.get("minHeadroom")
    return max(label_headroom, float(floor)) if floor is not None else label_headroom


def _describe(estimate: capacity.NodeEstimate) -> str:
    where = f"{estimate.gpus} × {capacity.human(estimate.vram_per_gpu)} {estimate.gpu_model}"
    text = (
        f"node group {estimate.group} on {estimate.instance_type} ({where}): needs {capacity.human(estimate.total)} "
        f"(weights {capacity.human(estimate.weights)}, KV {capacity.human(estimate.kv_cache)}, graph "
        f"{capacity.human(estimate.graph)}, overhead {capacity.human(estimate.overhead)}) of "
        f"{capacity.human(estimate.usable)} usable with {estimate.headroom:.0%} headroom"
    )
    if estimate.problems:
        text += "; " + "; ".join(estimate.problems)
    if estimate.suggestions:
        text += ". To fit, any one of: " + "; ".join(estimate.suggestions)
    return text


def estimate(node: NodeContract, headroom: float) -> capacity.NodeEstimate:
    """The node under the memory rules of the Ollama release its image runs (a CPU node against the RAM its
    stack declares)."""
    return capacity.estimate_node(
        node.group, headroom, PROJECT_ROOT, ollama_version=node.ollama_version, host_memory=node.host_memory
    )


def _terms(estimate: capacity.NodeEstimate) -> str:
    return (
        f"weights {capacity.human(estimate.weights)}, KV {capacity.human(estimate.kv_cache)}, graph "
        f"{capacity.human(estimate.graph)}"
    )


def _cpu_memory_problem(node: NodeContract, found: capacity.NodeEstimate, urn: str) -> str | None:
    """Why a CPU node's models do not fit the RAM its stack declares, or that no RAM is declared to judge them by."""
    where = f"{stack_file(urn)}: {contract.config_key('local.memoryGib')}: node group {found.group} on the local Docker host"
    if node.host_memory is None:
        return (
            f"{where} needs {capacity.human(found.total)} of its RAM ({_terms(found)}), and the stack does not say how "
            "much RAM the host gives Ollama, so there is no memory verdict; allowed: local.memoryGib, the GiB of RAM "
            "the Docker host gives Ollama's models"
        )
    if found.fits:
        return None
    problems = "; ".join(found.problems)
    return (
        f"{where} needs {capacity.human(found.total)} ({_terms(found)}) of {capacity.human(found.usable)} usable "
        f"of the {capacity.human(found.capacity)} RAM declared, with {found.headroom:.0%} headroom"
        f"{'; ' + problems if problems else ''} (memory rules of Ollama {node.ollama_version}). Allowed: models, "
        f"numCtx, numParallel and kvCacheType of {node.key()} whose estimate fits that RAM, or local.memoryGib "
        "raised to the RAM the host really gives Ollama"
    )


def validate_vram_fit(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not _ollama_container(args):
        return
    try:
        node = node_of(args.props)
        found = estimate(node, _headroom(args.get_config(), node.headroom))
    except (ContractError, capacity.CapacityError, ValueError) as exc:
        report(_cannot_check("VRAM", args.urn, args.name, exc), None)
        return
    problem = ollama_rules.variant_problem(node.ollama_image, found.gpus)
    if problem:
        report(f"{stack_file(args.urn)}: {contract.config_key('images.ollama')}: {args.name}: {problem}", None)
        return
    if found.cpu_only:
        problem = _cpu_memory_problem(node, found, args.urn)
        if problem:
            report(problem, None)
        return
    given = gpus_given(args.props)
    if found.gpus and given is not None and given < found.gpus:
        report(
            f"{stack_file(args.urn)}: {node.key('instanceType')}: {args.name} is given {given} of the {found.gpus} GPUs "
            f"of {found.instance_type} (its deviceRequests), but the estimate places its models on all of them; "
            "allowed: every GPU of the host (deviceRequests count -1)",
            None,
        )
        return
    if found.has_verdict and not found.fits:
        report(
            f"{stack_file(args.urn)}: {node.key()}: {_describe(found)} (memory rules of Ollama {node.ollama_version}, "
            f"from {contract.config_key('images.ollama')}). Allowed: models, numCtx, numParallel and "
            f"kvCacheType whose estimate fits the GPUs with {contract.config_key('policy.vramHeadroom')} kept free",
            None,
        )


def gpus_given(props: Mapping[str, Any]) -> int | None:
    """GPUs a container's deviceRequests hand it (None: every GPU of the host, `count: -1`)."""
    given = 0
    for request in _items(_get(props, "deviceRequests")):
        capabilities = [c for group in _items(_get(request, "capabilities")) for c in (_items(group) or [group])]
        if "gpu" not in capabilities and _get(request, "driver") != "nvidia":
            continue
        ids = _items(_get(request, "deviceIds"))
        count = _int(_get(request, "count"), 0)
        if ids:
            given += len(ids)
        elif count is not None and count < 0:
            return None
        else:
            given += count or 0
    return given


vram_fit = ResourceValidationPolicy(
    name="vram-fit",
    description="Every model an Ollama node keeps loaded, with its KV cache for numCtx × numParallel, the compute "
    "graph and per-GPU overhead, must fit the instance's GPUs with the configured headroom; on the local Docker "
    "host (local-cpu), the RAM the stack declares (local.memoryGib), which must be declared.",
    validate=validate_vram_fit,
    severity=Severity.HIGH,
    config_schema=PolicyConfigSchema(
        properties={"minHeadroom": {"type": "number", "minimum": 0, "maximum": 0.9, "description": "Lowest headroom accepted, whatever the node's label says."}}
    ),
    remediation_steps="Run `fleet plan --stack <stack>` and apply one of the changes it suggests.",
)


# ---------------------------------------------------------------------------- quantization-required


def validate_quantization(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not _ollama_container(args):
        return
    try:
        node = node_of(args.props)
    except ContractError as exc:
        report(_cannot_check("quantization", args.urn, args.name, exc), None)
        return
    group, headroom = node.group, node.headroom
    try:
        version = node.ollama_version
    except capacity.CapacityError as exc:
        report(_cannot_check("quantization", args.urn, args.name, exc), None)
        return
    instance = catalog.find_instance(group.instance_type)
    if instance is None or instance.gpus == 0:
        return  # no VRAM to fit on a CPU host
    for index, spec in enumerate(group.models):
        if spec.gguf:
            continue  # a GGUF file carries its own quantization; vram-fit checks it
        arch = catalog.find_model(spec.ref)
        if arch is None or "fp16" not in arch.weights:
            continue
        with_fp16 = group.model_copy(update={"models": [m.model_copy(update={"quantization": "fp16"}) if m is spec else m for m in group.models]})
        if capacity.fits(with_fp16, headroom, PROJECT_ROOT, version):
            continue
        options = capacity.fitting_quantizations(group, spec.ref, headroom, PROJECT_ROOT, version)
        if spec.quantization in options:
            continue
        key = node.key(f"models[{index}].quantization")
        if options:
            report(
                f"{stack_file(args.urn)}: {key}: {spec.ref} does not fit {group.instance_type} at fp16 and its "
                f"quantization {spec.quantization} does not fit either; quantizations that fit: {', '.join(options)}",
                None,
            )
        else:
            report(
                f"{stack_file(args.urn)}: {key}: {spec.ref} does not fit {group.instance_type} at fp16 nor at any "
                f"published quantization ({', '.join(arch.quantizations())}) with numParallel "
                f"{group.ollama.num_parallel}: lower numCtx or numParallel, or pick a larger instance type",
                None,
            )


quantization_required = ResourceValidationPolicy(
    name="quantization-required",
    description="A model too big for the GPUs at fp16 must name a quantization with which the node fits.",
    validate=validate_quantization,
    severity=Severity.HIGH,
)


# ------------------------------------------------------------------------------- concurrency-bounds


def _resources_of(args: StackValidationArgs, type_: str, wanted_role: str | None = None, unknown: list | None = None) -> list[Any]:
    """Resources of a type (and container role); those whose labels are unknown in a preview go to `unknown`."""
    out = []
    for resource in args.resources:
        if resource.resource_type != type_:
            continue
        try:
            if wanted_role is not None and role(resource.props) != wanted_role:
                continue
        except UnknownValueError:
            if unknown is not None:
                unknown.append(resource)
            continue
        out.append(resource)
    return out


def validate_concurrency(args: StackValidationArgs, report: ReportViolation) -> None:
    groups: dict[str, tuple[NodeContract, Any]] = {}
    unknown: list[Any] = []  # containers whose labels a preview cannot know yet
    unreadable: list[Any] = []  # containers already reported
    for resource in _resources_of(args, CONTAINER, "ollama", unknown):
        where = stack_file(resource.urn)
        try:
            node = node_of(resource.props)
        except UnknownValueError:
            unknown.append(resource)
            continue
        except ContractError as exc:
            report(_cannot_check("concurrency", resource.urn, resource.name, exc), resource.urn)
            unreadable.append(resource)
            continue
        group = node.group
        first = groups.setdefault(group.name, (node, resource))[0].group
        if first is not group and capacity.max_conns_per_node(first, 0) != capacity.max_conns_per_node(group, 0):
            report(
                f"{where}: {node.key()}: nodes of group {group.name} differ in numParallel or resident models; the "
                "gateway gives every node of a group the same max_conns. Allowed: one setting per group",
                resource.urn,
            )
        for index, spec in enumerate(group.models):
            try:
                arch = capacity.resolve_arch(spec, PROJECT_ROOT)
            except (capacity.CapacityError, ValueError):
                continue
            try:
                num_ctx, source = capacity.effective_num_ctx(spec, group, ollama_version=node.ollama_version)
            except capacity.CapacityError as exc:
                report(_cannot_check("concurrency", resource.urn, resource.name, exc), resource.urn)
                break
            if arch.max_context and num_ctx > arch.max_context:
                key = node.key(f"models[{index}].numCtx" if source == "numCtx" else "ollama.contextLength")
                what = "numCtx" if source == "numCtx" else f"OLLAMA_CONTEXT_LENGTH ({source})"
                report(
                    f"{where}: {key}: {spec.ref} {what} {num_ctx} exceeds the model's maximum context "
                    f"{arch.max_context}; allowed: at most {arch.max_context}",
                    resource.urn,
                )
    for gateway in _resources_of(args, CONTAINER, "gateway"):
        where = stack_file(gateway.urn)
        try:
            declared = contract.decode_gateway(contract.contract_labels_of(gateway.props))
        except UnknownValueError:
            continue
        except ContractError as exc:
            report(_cannot_check("concurrency", gateway.urn, gateway.name, exc), gateway.urn)
            continue
        conns = declared.max_conns
        for name, (node, resource) in sorted(groups.items()):
            group = node.group
            queue = declared.queue_for(name)
            if queue is None:
                report(f"{where}: label {contract.LABELS.queue_per_node} has no queue for group {name}", gateway.urn)
                continue
            expected = capacity.max_conns_per_node(group, queue)
            got = conns.get(name)
            if got != expected:
                report(
                    f"{where}: {node.key()}: the gateway's max_conns for group {name} is {got}, expected {expected} "
                    f"(numParallel {group.ollama.num_parallel} × {max(1, len(group.resident_models))} resident models "
                    f"+ queue {queue}, from {contract.config_key('gateway.queuePerNode')} or, when that is unset, "
                    f"{contract.config_key('gateway.ttftTargetSeconds')})",
                    gateway.urn,
                )
            if queue > group.ollama.max_queue:
                report(
                    f"{where}: {contract.config_key('gateway.queuePerNode')}: {queue} exceeds OLLAMA_MAX_QUEUE "
                    f"{group.ollama.max_queue} of group {name} ({node.key('ollama.maxQueue')}): Ollama would refuse "
                    f"requests the gateway lets through; allowed: at most {group.ollama.max_queue}",
                    resource.urn,
                )
        for name in sorted(set(conns) - set(groups)) if not (unknown or unreadable) else ():
            report(
                f"{where}: {contract.config_key('nodeGroups')}: the gateway's max_conns names group {name!r}, which has "
                f"no Ollama node; allowed: {', '.join(sorted(groups)) or 'the stack’s node groups'}",
                gateway.urn,
            )
    for container, key, problem in ollama_image_mismatches(args):
        report(f"{stack_file(container.urn)}: {key}: {container.name}: {problem}", container.urn)
    if unknown:
        # As the analyzer does for a value read during preview: say the check could not run on these nodes.
        raise UnknownValueError(UNKNOWN_STRING_VALUE, [unknown[0].name, "labels"])


concurrency_bounds = StackValidationPolicy(
    name="concurrency-bounds",
    description="numCtx within each model's maximum context; OLLAMA_NUM_PARALLEL set; the gateway's max_conns per "
    "node equal to numParallel × resident models + the allowed queue; every Ollama server runs in a container "
    "labelled as an Ollama node, from the image its label names.",
    validate=validate_concurrency,
    severity=Severity.MEDIUM,
)


# ------------------------------------------------------------------------------------ pinned-images


def image_problem(reference: str, require_digest: bool) -> str | None:
    """Why an image reference is not pinned enough (None when it is)."""
    if reference.startswith("sha256:"):
        return None  # an image ID (e.g. a RemoteImage's id): pinned by content
    without_digest = _DIGEST.sub("", reference)
    last = without_digest.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    if tag is None:
        return f"{reference}: no tag, which means `latest`; pin a release tag"
    if tag == "latest":
        return f"{reference}: `latest` is not pinned; pin a release tag"
    if require_digest and not _DIGEST.search(reference):
        return f"{reference}: needs its digest (`{without_digest}@sha256:...`)"
    return None


def validate_pinned_images(args: StackValidationArgs, report: ReportViolation) -> None:
    config = args.get_config()
    strict_envs = set(config.get("requireDigestIn", ["prod"]))
    environments = set()
    for container in _resources_of(args, CONTAINER):
        try:
            declared = contract.declared_environment(labels(container.props))
        except UnknownValueError:
            declared = None
        found = environment(container.urn, declared)
        if found:
            environments.add(found)
    strict = bool(environments & strict_envs)
    for resource in args.resources:
        key = {"docker:index/container:Container": "image", REMOTE_IMAGE: "name"}.get(resource.resource_type)
        if key is None:
            continue
        try:
            reference = _get(resource.props, key)
        except UnknownValueError:
            continue  # known only after the update (e.g. another resource's image id)
        if not isinstance(reference, str) or not reference:
            continue
        problem = image_problem(reference, strict)
        if problem:
            report(
                f"{stack_file(resource.urn)}: {contract.config_key('images')}: {resource.name}: {problem}; allowed: "
                f"`repository:tag@sha256:<digest>`{' (the digest is required in ' + ', '.join(sorted(strict_envs)) + ')' if strict else ''}",
                resource.urn,
            )
    if strict:
        for container in _resources_of(args, CONTAINER, "ollama"):
            for key, problem in unpinned_models(container.props):
                report(
                    f"{stack_file(container.urn)}: {key}: {container.name}: {problem}; allowed: `sha256:` and 64 "
                    f"lower-case hex digits, the digest Ollama lists for the pulled model (required in "
                    f"{', '.join(sorted(strict_envs))}; `fleet promote` writes the one the previous stack pulled)",
                    container.urn,
                )


def ollama_image_mismatches(args: StackValidationArgs) -> list[tuple[Any, str, str]]:
    """(container, key, problem) for each Ollama container that runs another image than the one its label names
    (the label decides which release's memory rules size it), and each other container that runs the Ollama image
    (no policy sizes it)."""
    pulled: dict[str, str] = {}  # image id or repo digest -> the reference a RemoteImage pulled
    for image in _resources_of(args, REMOTE_IMAGE):
        try:
            name = _get(image.props, "name")
            ids = [_get(image.props, "imageId"), _get(image.props, "repoDigest")]
        except UnknownValueError:
            continue
        for image_id in ids:
            if isinstance(image_id, str) and image_id and isinstance(name, str):
                pulled[image_id] = name
    found = []
    for container in _resources_of(args, CONTAINER):
        try:
            if role(container.props) == "ollama":
                continue
            running = _get(container.props, "image")
        except UnknownValueError:
            continue
        reference = pulled.get(running) if isinstance(running, str) else None
        reference = reference or (running if isinstance(running, str) and not running.startswith("sha256:") else None)
        if reference and _repository_name(reference) == "ollama":
            found.append(
                (
                    container,
                    contract.config_key("images.ollama"),
                    f"runs the Ollama image {reference} but is not an Ollama node (label {contract.LABELS.role} is "
                    f"{role(container.props)!r}), so no policy sizes it; allowed: the Ollama server only in the "
                    "containers the program labels as Ollama nodes",
                )
            )
    for container in _resources_of(args, CONTAINER, "ollama"):
        try:
            node = node_of(container.props)
            running = _get(container.props, "image")
        except (ContractError, UnknownValueError):
            continue  # another policy reports what cannot be read
        if not isinstance(running, str) or not running:
            continue
        reference = pulled.get(running, None if running.startswith("sha256:") else running)
        if reference is not None and reference != node.ollama_image:
            found.append(
                (
                    container,
                    contract.config_key("images.ollama"),
                    f"runs {reference}, but its label {contract.LABELS.ollama_image} names {node.ollama_image}, whose "
                    "release decides the memory rules it is sized by; allowed: the image the label names",
                )
            )
    return found


def _repository_name(reference: str) -> str:
    """The last path part of an image's repository (`ollama` for `registry:5000/mirror/ollama:0.32.15@sha256:…`)."""
    name = reference.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def unpinned_models(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(dotted key, problem) for each registry model of an Ollama node without a pinned manifest digest; a model
    imported from a GGUF file is pinned by that file. A node whose labels cannot be read is another policy's to
    report."""
    try:
        node = node_of(props)
    except (ContractError, UnknownValueError):
        return []
    return [
        (node.key(f"models[{index}].digest"), f"model {model.name}:{model.tag} has no digest")
        for index, model in enumerate(node.group.models)
        if model.gguf is None and model.digest is None
    ]


pinned_images = StackValidationPolicy(
    name="pinned-images",
    description=(
        "Container images are pinned: never `latest` or untagged; in the listed environments images carry their "
        "digest and every registry model its Ollama manifest digest."
    ),
    validate=validate_pinned_images,
    severity=Severity.MEDIUM,
    config_schema=PolicyConfigSchema(
        properties={
            "requireDigestIn": {
                "type": "array",
                "items": {"type": "string"},
                "default": ["prod"],
                "description": "Environments (container label ollama-fleet.environment) whose images and models need a digest.",
            }
        }
    ),
)


# ------------------------------------------------------------------------------------- no-public-inference-ports

# The stack-file key whose ranges open a port (the program opens the others to the gateway's group only;
# Grafana's port included: the gateway serves Grafana over HTTPS).
PORT_KEYS = {ports.PROMETHEUS: "gateway.adminCidrs", ports.SSH: "aws.sshCidrs"}


def _exposed(from_port: Any, to_port: Any, protocol: Any, private: Sequence[int]) -> list[int]:
    proto = str(protocol if protocol is not None else "tcp").lower()
    if proto in ("-1", "all"):
        return list(private)
    if proto not in ("tcp", "6"):
        return []
    low = _int(from_port, 0)
    high = _int(to_port, low)
    if low == 0 and high == 0:
        return []
    if low == -1 and high == -1:
        return list(private)
    return [p for p in private if low <= p <= high]


class _Groups:
    """Resources of one type (security groups, or network interfaces), one key each, however another resource
    names one: by the URN the engine's property dependencies give (all a preview knows of one not created yet),
    or by one of its `attributes` (id, name). The key is the URN when the stack holds the resource, else the value
    written (one of another stack)."""

    def __init__(self, resources: Sequence[Any], resource_type: str = SECURITY_GROUP,
                 attributes: Sequence[str] = ("id", "name")):
        self._parent: dict[str, str] = {}
        self.names: dict[str, str] = {}  # URN -> the resource's name, to show
        for resource in resources:
            if resource.resource_type != resource_type:
                continue
            self.names[resource.urn] = resource.name
            for attribute in attributes:
                try:
                    value = _get(resource.props, attribute)
                except UnknownValueError:
                    continue
                if isinstance(value, str) and value:
                    self._union(resource.urn, value)

    def find(self, key: str) -> str:
        while self._parent.get(key, key) != key:
            key = self._parent[key]
        return key

    def _union(self, a: str, b: str) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            # The URN stays the key: it names the group in messages.
            keep, drop = (a, b) if a in self.names else (b, a)
            self._parent[drop] = keep

    def named(self, resource: Any, prop: str, path: Sequence[Any] = ()) -> set[str]:
        """The groups `resource` names in `prop` (at `path` inside it: a list of ids, one id, or a list of objects
        holding such lists); UnknownValueError when a preview knows neither the ids nor the groups they come from."""
        deps = [d.urn for d in (resource.property_dependencies or {}).get(prop, []) if d.urn in self.names]
        try:
            literal = [str(v) for v in _strings(_get(resource.props, prop), path)]
        except UnknownValueError:
            if not deps:
                raise
            literal = []
        if len(literal) == 1 and len(deps) == 1:
            self._union(deps[0], literal[0])
        return {self.find(key) for key in literal + deps}

    def show(self, key: str) -> str:
        return self.names.get(key, key)


def _strings(value: Any, path: Sequence[Any]) -> list[str]:
    """Strings at `path` below `value`, lists flattened on the way (`networkInterfaces[*].securityGroups[*]`)."""
    if path:
        head, rest = path[0], path[1:]
        if isinstance(value, Sequence) and not isinstance(value, str):
            return [s for item in _items(value) for s in _strings(item, path)]
        return _strings(_get(value, head), rest) if isinstance(value, Mapping) else []
    if isinstance(value, str):
        return [value] if value else []
    return [item for item in _items(value) if isinstance(item, str) and item]


def _ingress(resource: Any, groups: _Groups) -> list[tuple[set[str], Any, Any, Any, list[str]]]:
    """(security groups, from port, to port, protocol, CIDRs) of each ingress rule a resource holds."""
    props = resource.props
    if resource.resource_type == SECURITY_GROUP:
        return [
            ({groups.find(resource.urn)}, _get(r, "fromPort"), _get(r, "toPort"), _get(r, "protocol"), _items(_get(r, "cidrBlocks")) + _items(_get(r, "ipv6CidrBlocks")))
            for r in _items(_get(props, "ingress"))
        ]
    if resource.resource_type == SG_INGRESS_RULE:
        cidrs = [c for c in (_get(props, "cidrIpv4"), _get(props, "cidrIpv6")) if c]
        if not cidrs:
            return []
        target = groups.named(resource, "securityGroupId") or {"(unknown group)"}
        return [(target, _get(props, "fromPort", default=-1), _get(props, "toPort", default=-1), _get(props, "ipProtocol"), cidrs)]
    if resource.resource_type == SG_RULE and _get(props, "type") == "ingress":
        cidrs = _items(_get(props, "cidrBlocks")) + _items(_get(props, "ipv6CidrBlocks"))
        if not cidrs:
            return []
        target = groups.named(resource, "securityGroupId") or {"(unknown group)"}
        return [(target, _get(props, "fromPort"), _get(props, "toPort"), _get(props, "protocol"), cidrs)]
    return []


# Where a host names the security groups that admit traffic to it: (property, path inside it).
HOST_GROUPS = {
    INSTANCE: (("vpcSecurityGroupIds", ()), ("securityGroups", ())),
    LAUNCH_TEMPLATE: (("vpcSecurityGroupIds", ()), ("securityGroupNames", ()), ("networkInterfaces", ("securityGroups",))),
    NETWORK_INTERFACE: (("securityGroups", ()),),
}


def _host_groups(resource: Any, groups: _Groups) -> set[str]:
    """Every security group attached to an instance, launch template or network interface."""
    found: set[str] = set()
    for prop, path in HOST_GROUPS.get(resource.resource_type, ()):
        found |= groups.named(resource, prop, path)
    return found


def _attached_groups(resources: Sequence[Any], groups: _Groups) -> dict[str, set[str]]:
    """Network interface (URN, id) -> groups that separate attachments add to it."""
    interfaces = _Groups(resources, NETWORK_INTERFACE, ("id",))
    added: dict[str, set[str]] = {}
    for resource in resources:
        if resource.resource_type != SG_ATTACHMENT:
            continue
        for interface in interfaces.named(resource, "networkInterfaceId"):
            added.setdefault(interface, set()).update(groups.named(resource, "securityGroupId"))
    return {key: value for key, value in added.items() if key in interfaces.names}


def validate_public_ports(args: StackValidationArgs, report: ReportViolation) -> None:
    """Per security group and port, every range any rule admits counts together: halves, /8s and IPv6 included;
    and per instance, launch template and network interface, the ranges of all the groups attached to it."""
    private = sorted({int(p) for p in args.get_config().get("ports", list(ports.PRIVATE_PORTS))} | {ports.SSH})
    groups = _Groups(args.resources)
    rules_found: list[tuple[Any, set[str], list[int], list[str]]] = []
    unknown: list[Any] = []
    for resource in args.resources:
        try:
            for targets, from_port, to_port, protocol, cidrs in _ingress(resource, groups):
                exposed = _exposed(from_port, to_port, protocol, private)
                if exposed and cidrs:
                    rules_found.append((resource, targets, exposed, [str(c) for c in cidrs]))
        except UnknownValueError:
            unknown.append(resource)
    # Every name of every group resolved before any range is counted (an instance can tell which URN an id is).
    attached = _attached_groups(args.resources, groups)
    hosts: list[tuple[Any, set[str]]] = []
    for resource in args.resources:
        if resource.resource_type in HOST_GROUPS:
            try:
                hosts.append((resource, _host_groups(resource, groups) | attached.get(resource.urn, set())))
            except UnknownValueError:
                unknown.append(resource)
    admitted: dict[tuple[str, int], list[str]] = {}
    for _, targets, exposed, cidrs in rules_found:
        for group in targets:
            for port in exposed:
                admitted.setdefault((groups.find(group), port), []).extend(cidrs)

    def world_ports(keys: set[str], among: Sequence[int] = private) -> tuple[list[int], list[str]]:
        """Ports (of `among`) the union of the groups' ranges opens to the world, with those ranges (ValueError: a
        range is not a CIDR)."""
        found, ranges = [], set()
        for port in among:
            cidrs = [c for key in keys for c in admitted.get((key, port), [])]
            if cidrs and address_ranges.is_world(cidrs):
                found.append(port)
                ranges.update(cidrs)
        return found, sorted(ranges)

    def refuse(where_urn: str, name: str, keys: set[str], world: list[int], cidrs: list[str], how: str) -> None:
        config_keys = sorted({contract.config_key(PORT_KEYS[p]) for p in world if p in PORT_KEYS})
        where = ", ".join(config_keys) if config_keys else "the security groups (only the gateway's group may reach these ports)"
        report(
            f"{stack_file(where_urn)}: {where}: {name}: ports {', '.join(map(str, world))} (Ollama, metering, exporters, "
            f"Prometheus, Alertmanager, Grafana or SSH) are open to {', '.join(cidrs)} {how} "
            f"{', '.join(sorted(groups.show(k) for k in keys))}, together {address_ranges.exposure(cidrs).describe()}: "
            f"the world; allowed: {address_ranges.WORLD_RULE}; only the gateway's HTTPS port faces clients",
            where_urn,
        )

    alone: dict[str, set[int]] = {}  # group -> ports its own rules open to the world
    for resource, targets, exposed, _ in rules_found:
        keys = {groups.find(g) for g in targets}
        try:
            world, cidrs = world_ports(keys, exposed)
            for key in keys:
                alone.setdefault(key, set()).update(world_ports({key})[0])
        except ValueError:
            bad = sorted({c for k in keys for p in exposed for c in admitted.get((k, p), [])})
            report(f"{stack_file(resource.urn)}: {resource.name}: a range is not a CIDR: {bad}", resource.urn)
            continue
        if world:
            refuse(resource.urn, resource.name, keys, world, cidrs, "in security group")
    # A host admits what any of its groups admits: two groups that each open half the world open it all.
    for resource, named in hosts:
        keys = {groups.find(k) for k in named}
        if len(keys) < 2:
            continue  # a single group is judged above
        try:
            world, cidrs = world_ports(keys)
        except ValueError:
            continue  # reported above, on the rule
        reported = {p for key in keys for p in alone.get(key, ())}
        world = [p for p in world if p not in reported]  # a group open to the world alone is reported on its rules
        if world:
            refuse(resource.urn, resource.name, keys, world, cidrs, "through its security groups")
    if unknown:
        raise UnknownValueError(UNKNOWN_STRING_VALUE, [unknown[0].name, "ingress"])


no_public_inference_ports = StackValidationPolicy(
    name="no-public-inference-ports",
    description="Ollama (11434), the meter, exporters, Prometheus (9090), Alertmanager, Grafana (3000) and SSH (22) are never open "
    "to the world: the ranges that reach a port of a security group, and of all the groups attached to one instance, "
    "launch template or network interface together, however split, hold at most a /8's worth of public addresses; "
    "only the gateway's HTTPS port faces clients.",
    validate=validate_public_ports,
    severity=Severity.CRITICAL,
    config_schema=PolicyConfigSchema(
        properties={"ports": {"type": "array", "items": {"type": "integer"}, "default": list(ports.PRIVATE_PORTS)}}
    ),
)


# ------------------------------------------------------------------------------------- ports-on-loopback


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def validate_published_ports(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != CONTAINER:
        return
    bindings = _items(_get(args.props, "ports"))
    host_network = str(_get(args.props, "networkMode", default="")).strip().lower() == "host"
    if not bindings and not host_network:
        return
    try:
        scope = contract.decode_publish_scope(contract.contract_labels_of(args.props))
    except ContractError as exc:
        report(_cannot_check("published ports", args.urn, args.name, exc), None)
        return
    if scope != "loopback":
        return  # under AWS security groups (no-public-inference-ports), or the stack opted in
    if host_network:
        report(
            f"{stack_file(args.urn)}: {contract.config_key('local.bindAddress')}: {args.name} runs in the host's "
            "network (networkMode host): every port it listens on is open on every network of this machine; "
            f"allowed: a container network with ports published on loopback, or "
            f"{contract.config_key('local.publishBeyondLoopback')}: true to publish on purpose",
            None,
        )
    beyond = []
    for binding in bindings:
        # Docker binds every address when a published port names none.
        address = str(_get(binding, "ip", default="0.0.0.0"))
        if not _is_loopback(address):
            beyond.append(f"{address}:{_int(_get(binding, 'external')) or _int(_get(binding, 'internal'))}")
    if beyond:
        report(
            f"{stack_file(args.urn)}: {contract.config_key('local.bindAddress')}: {args.name} publishes "
            f"{', '.join(beyond)}, beyond this machine; allowed: a loopback address (127.0.0.1, ::1), or "
            f"{contract.config_key('local.publishBeyondLoopback')}: true to publish on purpose",
            None,
        )


ports_on_loopback = ResourceValidationPolicy(
    name="ports-on-loopback",
    description="On the local Docker host every published port listens on loopback, unless the stack sets "
    "local.publishBeyondLoopback.",
    validate=validate_published_ports,
    severity=Severity.HIGH,
)


# ------------------------------------------------------------------------------------- tls-in-prod


def validate_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != CONTAINER or role(args.props) != "gateway":
        return
    try:
        tags = contract.contract_labels_of(args.props)
        mode = contract.decode_gateway(tags).tls_mode
    except ContractError as exc:
        report(_cannot_check("TLS", args.urn, args.name, exc), None)
        return
    env = environment(args.urn, contract.declared_environment(tags))
    strict = set(args.get_config().get("environments", ["prod"]))
    key = f"{stack_file(args.urn)}: {contract.config_key('gateway.tls.mode')}"
    if env in strict and mode not in ("acme", "provided"):
        report(f"{key}: the gateway serves TLS mode {mode!r}; {env} needs a trusted certificate; allowed: acme, provided", None)
    elif env != "dev" and mode == "off":
        report(
            f"{key}: the gateway serves plain HTTP (tls mode off) in {env or 'a stack of no known environment'}; "
            "only dev may; allowed: self-signed, acme, provided",
            None,
        )


tls_in_prod = ResourceValidationPolicy(
    name="tls-in-prod",
    description="The gateway terminates TLS with a trusted certificate (ACME or provided) in prod; only dev may run without TLS.",
    validate=validate_tls,
    severity=Severity.HIGH,
    config_schema=PolicyConfigSchema(
        properties={"environments": {"type": "array", "items": {"type": "string"}, "default": ["prod"]}}
    ),
)


# ------------------------------------------------------------------------------ environment-of-stack


def validate_environment(args: StackValidationArgs, report: ReportViolation) -> None:
    """The stack's name decides its environment; containers that declare another one were built from a stack
    file that claims to be what it is not."""
    for container in _resources_of(args, CONTAINER):
        try:
            declared = contract.declared_environment(labels(container.props))
        except UnknownValueError:
            continue
        stack = stack_of(container.urn)
        decided = environment_of_stack(stack)
        if declared is None:
            report(
                f"{stack_file(container.urn)}: {container.name}: label {contract.LABELS.environment} is missing; "
                f"allowed: {', '.join(contract.environment_names())}",
                container.urn,
            )
        elif decided is not None and declared != decided:
            report(
                f"{stack_file(container.urn)}: {contract.config_key('environment')}: {container.name} is deployed "
                f"as {declared!r}, but stack {stack!r} is a {decided} stack (its name decides); allowed: {decided}",
                container.urn,
            )
            return  # one finding names the key; every container says the same


environment_of_stack_policy = StackValidationPolicy(
    name="environment-of-stack",
    description="The stack's name decides its environment (prod, prod-eu, prodeu, euprod, production… are prod; "
    "preprod is staging): a stack file "
    "declaring another environment does not get that environment's laxer rules.",
    validate=validate_environment,
    severity=Severity.HIGH,
)


# ---------------------------------------------------------------------------------- imdsv2-required


def validate_imdsv2(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in (INSTANCE, LAUNCH_TEMPLATE):
        return
    tokens = _get(args.props, "metadataOptions", "httpTokens")
    if tokens != "required":
        report(f"metadataOptions.httpTokens is {tokens!r}; set it to \"required\" (IMDSv2 only)", None)


imdsv2_required = ResourceValidationPolicy(
    name="imdsv2-required",
    description="EC2 instances and launch templates require IMDSv2 session tokens (metadataOptions.httpTokens = required).",
    validate=validate_imdsv2,
    severity=Severity.HIGH,
)


# --------------------------------------------------------------------------------- encrypted-volumes


def _encrypted(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def validate_encryption(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = args.props
    if args.resource_type == EBS_VOLUME:
        if not _encrypted(_get(props, "encrypted")):
            report("EBS volume is not encrypted; set encrypted: true", None)
    elif args.resource_type == INSTANCE:
        if not _encrypted(_get(props, "rootBlockDevice", "encrypted")):
            report("rootBlockDevice.encrypted is not true", None)
        for index, device in enumerate(_items(_get(props, "ebsBlockDevices"))):
            if not _encrypted(_get(device, "encrypted")):
                report(f"ebsBlockDevices[{index}] ({_get(device, 'deviceName', default='?')}) is not encrypted", None)
    elif args.resource_type == LAUNCH_TEMPLATE:
        for index, mapping in enumerate(_items(_get(props, "blockDeviceMappings"))):
            ebs = _get(mapping, "ebs")
            if ebs is not None and not _encrypted(_get(ebs, "encrypted")):
                report(f"blockDeviceMappings[{index}].ebs.encrypted is not true", None)


encrypted_volumes = ResourceValidationPolicy(
    name="encrypted-volumes",
    description="Every EBS volume is encrypted: instance root and data volumes, launch-template volumes, the model volume.",
    validate=validate_encryption,
    severity=Severity.HIGH,
)


# ------------------------------------------------------------------------------- admin-routes-closed


_LOCATION = re.compile(r"\blocation\s+(?:(=|~\*|~|\^~)\s+)?(\"[^\"]*\"|'[^']*'|[^\s{]+)\s*\{")
_SERVER = re.compile(r"\bserver\s*\{")
_DENY_ALL = re.compile(r"\bdeny\s+all\s*;")
_REFUSE = re.compile(r"\breturn\s+40[134]\b")
_IF_BLOCK = re.compile(r"\bif\s*\(([^)]*)\)\s*\{([^{}]*)\}")
_ADMIN_ROUTE = re.compile(r"(^|/)api/(pull|push|create|copy|delete|blobs)\b")
_FORWARDS = re.compile(r"\b(proxy_pass|grpc_pass|fastcgi_pass|uwsgi_pass|scgi_pass)\b")


def _strip_comments(text: str) -> str:
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


def _block(text: str, open_brace: int) -> tuple[str, int]:
    """The body of the `{` at `open_brace` and the index after its closing `}`."""
    depth = 0
    for index in range(open_brace, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : index], index + 1
    return text[open_brace + 1 :], len(text)


def _locations(server_body: str) -> list[tuple[str, str, str]]:
    """Top-level locations of a server block: (modifier, pattern, body)."""
    found = []
    position = 0
    while True:
        match = _LOCATION.search(server_body, position)
        if not match:
            return found
        body, position = _block(server_body, match.end() - 1)
        found.append((match.group(1) or "", match.group(2).strip("\"'"), body))


def _servers(conf: str) -> list[str]:
    text = _strip_comments(conf)
    servers, position = [], 0
    while True:
        match = _SERVER.search(text, position)
        if not match:
            return servers
        body, position = _block(text, match.end() - 1)
        servers.append(body)


def matching_location(locations: list[tuple[str, str, str]], uri: str) -> tuple[str, str, str] | None:
    """The location nginx picks for `uri`: exact, else longest prefix (`^~` stops), else first regex, else prefix."""
    for loc in locations:
        if loc[0] == "=" and loc[1] == uri:
            return loc
    prefixes = [loc for loc in locations if loc[0] in ("", "^~") and uri.startswith(loc[1])]
    longest = max(prefixes, key=lambda loc: len(loc[1]), default=None)
    if longest is not None and longest[0] == "^~":
        return longest
    for loc in locations:
        if loc[0] in ("~", "~*"):
            flags = re.IGNORECASE if loc[0] == "~*" else 0
            try:
                if re.search(loc[1], uri, flags):
                    return loc
            except re.error:
                continue
    return longest


def location_closed(body: str) -> bool:
    """A location refuses client keys: it forwards nothing, or `deny all`, or refuses (401/403/404)
    unconditionally or under a condition on an admin check (`if ($..admin..) { return 403; }`)."""
    if not _FORWARDS.search(body) or _DENY_ALL.search(body):
        return True
    for condition, inner in _IF_BLOCK.findall(body):
        if "admin" in condition.lower() and _REFUSE.search(inner):
            return True
    return bool(_REFUSE.search(_IF_BLOCK.sub("", body)))


def open_admin_routes(conf: str, paths: Sequence[str] = ADMIN_PATHS) -> list[str]:
    """Admin routes that a proxying server forwards to Ollama without refusing client keys: the given paths as
    nginx would route them, and every location whose own path is an admin route (e.g. per-group prefixes)."""
    exposed = []
    for server in _servers(conf):
        if not _FORWARDS.search(server):
            continue
        locations = _locations(server)
        checked: set[int] = set()
        for path in paths:
            loc = matching_location(locations, path)
            if loc is None:
                continue  # no location: nginx answers 404
            checked.add(id(loc))
            if not location_closed(loc[2]):
                exposed.append(f"{path} (location {loc[0] + ' ' if loc[0] else ''}{loc[1]})")
        for loc in locations:
            if id(loc) in checked or loc[0] not in ("", "=", "^~") or not _ADMIN_ROUTE.search(loc[1]):
                continue
            if not location_closed(loc[2]):
                exposed.append(f"{loc[1]} (location {loc[0] + ' ' if loc[0] else ''}{loc[1]})")
    return exposed


def _nginx_conf(props: Mapping[str, Any]) -> str | None:
    import base64

    for upload in _items(_get(props, "uploads")):
        if str(_get(upload, "file", default="")).endswith("nginx.conf"):
            content = _get(upload, "content")
            if content is None and _get(upload, "contentBase64"):
                content = base64.b64decode(str(_get(upload, "contentBase64"))).decode("utf-8", "replace")
            return content
    return None


def validate_admin_routes(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != CONTAINER or role(args.props) != "gateway":
        return
    try:
        admin = contract.decode_gateway(contract.contract_labels_of(args.props)).admin_cidrs
        exposure = address_ranges.exposure(admin)
    except (ContractError, ValueError) as exc:
        report(_cannot_check("the admin ranges", args.urn, args.name, exc), None)
    else:
        if exposure.is_world:
            report(
                f"{stack_file(args.urn)}: {contract.config_key('gateway.adminCidrs')}: the admin key works from "
                f"{', '.join(admin)} ({exposure.describe()}): the whole internet, whether monitoring is on or not; "
                f"allowed: {address_ranges.WORLD_RULE}",
                None,
            )
    conf = _nginx_conf(args.props)
    if conf is None:
        report("gateway container uploads no nginx.conf; cannot verify that admin routes are closed", None)
        return
    paths = list(args.get_config().get("adminPaths", ADMIN_PATHS))
    exposed = open_admin_routes(conf, paths)
    if exposed:
        report(
            "admin routes reach Ollama without a deny or an admin-key check: " + ", ".join(exposed)
            + "; close them to client keys (deny all / return 403 unless the admin key)",
            None,
        )


admin_routes_closed = ResourceValidationPolicy(
    name="admin-routes-closed",
    description="The admin key works only from admin ranges that are not the world, and the gateway never forwards "
    "Ollama's administrative routes (/api/pull, /api/push, /api/create, "
    "/api/copy, /api/delete, /api/blobs) for client keys.",
    validate=validate_admin_routes,
    severity=Severity.CRITICAL,
    config_schema=PolicyConfigSchema(
        properties={"adminPaths": {"type": "array", "items": {"type": "string"}, "default": list(ADMIN_PATHS)}}
    ),
)


POLICIES = [
    vram_fit,
    quantization_required,
    concurrency_bounds,
    pinned_images,
    no_public_inference_ports,
    ports_on_loopback,
    tls_in_prod,
    environment_of_stack_policy,
    imdsv2_required,
    encrypted_volumes,
    admin_routes_closed,
]

POLICY_NAMES = [p.name for p in POLICIES]
