"""Resources for the policy tests: what the real program registers under mocks for a stack, or for a stack
file with overrides (`program_resources`), and edits made through `fleet.contract` for the few cases the
program cannot produce (garbled labels, resources another program might add). No label key is spelled here."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pulumi.runtime.rpc import UNKNOWN

from fleet import contract
from fleet.config import ModelSpec
from fleet.contract import NodeContract
from fleet.preview.policy_runner import evaluate
from fleet.resources import RegisteredResource
from fleet.stack_file import StackConfigError, load_stack_file
from policies import rules

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "ollama-fleet"

CONTAINER = rules.CONTAINER
REMOTE_IMAGE = rules.REMOTE_IMAGE
INSTANCE = rules.INSTANCE
EBS_VOLUME = rules.EBS_VOLUME
SECURITY_GROUP = rules.SECURITY_GROUP
SG_INGRESS = rules.SG_INGRESS_RULE
SG_RULE = rules.SG_RULE

# Runs the program under mocks in a fresh interpreter (Pulumi's mocks are process-global) for a stack file
# with dotted overrides (`nodeGroups.0.ollama.numParallel`), and prints the registrations as a policy reads them.
_DUMP = """
import json, pickle, sys
from dataclasses import replace
from fleet import contract
from fleet.preview import offline as preview
from fleet.local.dataplane import apply_overrides
from fleet.config import FLEET_KEY
from fleet.preview.policy_runner import plain
from fleet.stack_file import load_stack
stack, overrides, renamed = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
if renamed:
    contract.LABELS = replace(contract.LABELS, **renamed)
config = load_stack(stack)
if overrides:
    raw = dict(config.raw_config)
    raw[FLEET_KEY] = apply_overrides(raw[FLEET_KEY], overrides)
    config = replace(config, raw_config=raw)
result = preview.run_program(config)
for r in result.resources:
    r.inputs = plain(r.inputs)
    r.outputs = plain(r.outputs or {})
sys.stdout.buffer.write(pickle.dumps(result.resources))
"""

_CACHE: dict[str, list[RegisteredResource]] = {}


class ProgramFailed(AssertionError):
    """The program refused the stack (stderr holds its message)."""


def program_resources(
    stack: str, overrides: Mapping[str, Any] | None = None, renamed_labels: Mapping[str, str] | None = None
) -> list[RegisteredResource]:
    """What the real program registers for `stack` (with `overrides` applied to its fleet object), a fresh copy."""
    key = json.dumps([stack, overrides or {}, renamed_labels or {}], sort_keys=True)
    if key not in _CACHE:
        done = subprocess.run(
            [sys.executable, "-c", _DUMP, stack, json.dumps(overrides or {}), json.dumps(renamed_labels or {})],
            cwd=ROOT,
            capture_output=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise ProgramFailed(done.stderr.decode()[-3000:])
        _CACHE[key] = pickle.loads(done.stdout)
    return copy.deepcopy(_CACHE[key])


def violations(resources: list[RegisteredResource], stack: str, policy: str) -> list:
    """What `policy` says of the resources when previewed as `stack`."""
    return evaluate(resources, stack).by_policy(policy)


def changed_stack_file(folder: Path, name: str, source: str, change) -> Path:
    """A copy of Pulumi.<source>.yaml written as Pulumi.<name>.yaml in `folder`, changed by
    `change(fleet_object)`."""
    document = yaml.safe_load((ROOT / f"Pulumi.{source}.yaml").read_text())
    change(document["config"]["ollama-fleet:fleet"])
    path = folder / f"Pulumi.{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def refusal(path: Path) -> str:
    """The error that loading the stack file raises (it must raise one)."""
    with pytest.raises(StackConfigError) as caught:
        load_stack_file(path)
    return str(caught.value)


def find(resources: list[RegisteredResource], type_: str, role: str | None = None) -> list[RegisteredResource]:
    found = [r for r in resources if r.type == type_]
    if role is not None:
        found = [r for r in found if contract.role_of(r.label_map) == role]
    return found


def node_of(resource: RegisteredResource) -> NodeContract:
    return contract.decode_node(resource.label_map, resource.env_map)


def _both(res: RegisteredResource, key: str, change) -> None:
    """Apply `change` to an input and to the recorded output of the same name (the state a stack policy reads)."""
    res.inputs[key] = change(res.inputs.get(key) or [])
    if key in (res.outputs or {}):
        res.outputs[key] = change(res.outputs[key])


def set_prop(res: RegisteredResource, key: str, value: Any) -> None:
    """Set an input, and the recorded output of the same name (the state a stack policy reads)."""
    _both(res, key, lambda _: value)


def set_label(res: RegisteredResource, key: str, value: str | None) -> None:
    """Set (or with None remove) a label; `key` is one of `contract.LABELS`."""
    kept = lambda items: [i for i in items if i["label"] != key]  # noqa: E731
    _both(res, "labels", lambda items: kept(items) + (contract.docker_labels({key: value}) if value is not None else []))


def set_env(res: RegisteredResource, key: str, value: str | None) -> None:
    def change(envs):
        kept = [e for e in envs if not e.startswith(f"{key}=")]
        return kept + ([f"{key}={value}"] if value is not None else [])

    _both(res, "envs", change)


def set_node(res: RegisteredResource, node: NodeContract) -> None:
    """Write a node's contract onto an Ollama container, as the component does."""
    for key, value in node.labels().items():
        set_label(res, key, value)
    for key in contract.OLLAMA_ENV.values():
        set_env(res, key, node.environment().get(key))


def with_models(node: NodeContract, models: list[dict[str, Any]]) -> NodeContract:
    """The node serving `models` (stack-file spelling), built without the config's checks, so that a test can
    hand the policies what a stack file could not pass (numCtx beyond the model, no quantization)."""
    specs = [ModelSpec.model_construct(**_fields(m)) for m in models]
    group = node.group.model_copy(update={"models": specs})
    return NodeContract(group, node.group_index, node.node, node.headroom, node.ollama_image)


def _fields(model: dict[str, Any]) -> dict[str, Any]:
    by_alias = {info.alias or name: name for name, info in ModelSpec.model_fields.items()}
    values = {name: info.default for name, info in ModelSpec.model_fields.items() if not info.is_required()}
    values.update({by_alias.get(k, k): v for k, v in model.items()})
    return values


def set_models(res: RegisteredResource, models: list[dict[str, Any]]) -> None:
    set_node(res, with_models(node_of(res), models))


# ---- resources the program does not register (other programs, hand edits) ------------------------------------


def urn(stack: str, type_: str, name: str) -> str:
    return f"urn:pulumi:{stack}::{PROJECT}::{type_}::{name}"


def resource(stack: str, type_: str, name: str, inputs: dict[str, Any], outputs: dict[str, Any] | None = None) -> RegisteredResource:
    return RegisteredResource(type=type_, name=name, urn=urn(stack, type_, name), custom=True, inputs=inputs, outputs=outputs or {})


def ingress_rule(stack: str, name: str, port: int, *, cidr: str | None = None, cidr6: str | None = None,
                 source_group: str | None = None, protocol: str = "tcp", to_port: int | None = None,
                 group: str = "sg-0123456789abcdef0") -> RegisteredResource:
    inputs: dict[str, Any] = {"securityGroupId": group, "ipProtocol": protocol, "fromPort": port, "toPort": to_port or port}
    if cidr:
        inputs["cidrIpv4"] = cidr
    if cidr6:
        inputs["cidrIpv6"] = cidr6
    if source_group:
        inputs["referencedSecurityGroupId"] = source_group
    return resource(stack, SG_INGRESS, name, inputs)


def restack(resources: list[RegisteredResource], stack: str) -> list[RegisteredResource]:
    """The same registrations under another stack's URNs (what a stack file copied to another name registers)."""
    out = copy.deepcopy(resources)
    for r in out:
        head, rest = r.urn.split("::", 1)
        r.urn = f"urn:pulumi:{stack}::{rest}"
        r.parent_urn = r.parent_urn and f"urn:pulumi:{stack}::{r.parent_urn.split('::', 1)[1]}"
        r.depends_on = [f"urn:pulumi:{stack}::{d.split('::', 1)[1]}" for d in r.depends_on]
        r.provider = r.provider and f"urn:pulumi:{stack}::{r.provider.split('::', 1)[1]}"
    return out


def security_group(stack: str, name: str, group_id: str, ingress: list[tuple[int, list[str]]] = ()) -> RegisteredResource:
    """A security group with inline ingress rules (port, CIDRs), its id in its recorded outputs as the engine's state
    holds it."""
    rules_ = [
        {"fromPort": port, "toPort": port, "protocol": "tcp",
         "cidrBlocks": [c for c in cidrs if ":" not in c], "ipv6CidrBlocks": [c for c in cidrs if ":" in c]}
        for port, cidrs in ingress
    ]
    return resource(stack, SECURITY_GROUP, name, {"ingress": rules_}, {"id": group_id})


def attach(res: RegisteredResource, key: str, groups: list[RegisteredResource], ids: list[str] | None = None) -> None:
    """Name `groups` in `res`'s property `key` as the program would: their ids as the value (None: unknown, as in a
    preview before the groups exist) and their URNs as the property's dependencies."""
    set_prop(res, key, ids if ids is not None else [UNKNOWN] * len(groups))
    res.property_dependencies[key] = [g.urn for g in groups]

