"""Offline preview: run the real Pulumi program under mocks, then show the plan, the capacity and the policy verdict.

No cloud credentials and no Pulumi CLI: the program registers its resources with a recording mock monitor
(`fleet.preview.mock_cloud`), and the recorded inputs go to the same policies `pulumi preview --policy-pack policies`
runs. Secret config values cannot be decrypted offline; they are replaced by placeholders (still secret).
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fleet.config import FLEET_KEY, PROJECT, SECRET_KEYS
from fleet.plans.alerting import unset_secret_problems
from fleet.render import alertmanager
from fleet.resources import RegisteredResource
from fleet.stack_file import StackConfig

# Placeholder for a secret value that only the Pulumi CLI could decrypt.
_SECRET_PLACEHOLDERS = {f"{PROJECT}:apiKeys": "{}"}

# Properties worth a glance per resource type (the rest is in --json).
KEY_PROPERTIES: dict[str, tuple[str, ...]] = {
    "aws:ec2/instance:Instance": ("instanceType", "availabilityZone"),
    "aws:ebs/volume:Volume": ("size", "type", "encrypted"),
    "aws:ec2/vpc:Vpc": ("cidrBlock",),
    "aws:ec2/subnet:Subnet": ("cidrBlock", "availabilityZone"),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": ("fromPort", "cidrIpv4", "referencedSecurityGroupId"),
    "aws:route53/record:Record": ("name", "type"),
    "docker:index/remoteImage:RemoteImage": ("name",),
    "docker:index/container:Container": ("restart", "memory"),
}


@dataclass
class PreviewResult:
    stack: str
    resources: list[RegisteredResource]
    outputs: dict[str, Any] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # urn -> the id the mock cloud gave a custom resource

    @property
    def counts(self) -> Counter:
        return Counter(r.type for r in self.resources)


def _config_for_mocks(stack_config: StackConfig) -> tuple[dict[str, str], list[str]]:
    values: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in stack_config.raw_config.items():
        if key in SECRET_KEYS:
            values[key] = _SECRET_PLACEHOLDERS.get(key, f"offline-preview-placeholder-{key.split(':')[1]}")
            if key == alertmanager.SECRETS_KEY:  # a JSON object with a stand-in for each receiver that needs one
                values[key] = json.dumps(alertmanager.placeholder_secrets(stack_config.settings))
            secret_keys.append(key)
        elif isinstance(value, (dict, list)):
            values[key] = json.dumps(value)
        else:
            values[key] = str(value)
    values.setdefault(FLEET_KEY, json.dumps(stack_config.raw_config[FLEET_KEY]))
    # Secrets an imported ESC environment holds (only the Pulumi CLI reads it): stand-ins for those the
    # program cannot do without, as for the ones the file sets.
    if stack_config.esc_environments:
        settings = stack_config.settings
        needed = {}
        if unset_secret_problems(settings):  # a receiver needs its secret
            needed[alertmanager.SECRETS_KEY] = json.dumps(alertmanager.placeholder_secrets(settings))
        if settings.gateway.tls.mode == "provided":
            needed.update({key: f"offline-preview-placeholder-{key.split(':')[1]}"
                           for key in (f"{PROJECT}:tlsCertificate", f"{PROJECT}:tlsPrivateKey")})
        for key, placeholder in needed.items():
            if key not in values:
                values[key] = placeholder
                secret_keys.append(key)
    return values, secret_keys


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Run a block without Python's cyclic garbage collector, then freeze what it left.

    For each property of every resource (a Docker container has 78) the SDK keeps futures and an Output alive
    until the program ends: about a million tracked objects at 50 nodes, which every full collection walked again;
    with the collector on, it took about half of a large preview's CPU time (bench/preview_scale.py). Reference
    counting still frees what is not in a cycle; the cycles left behind stay until the process ends, for a preview
    or a render moments later (a 100-node preview peaks at about 370 MB instead of 360 MB). `gc.freeze()` moves
    the program's objects out of the collector's view, so that the first collection after the block does not walk
    them all once more."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def run_program(stack_config: StackConfig, mocks=None, also=None) -> PreviewResult:
    """Run components.program under recording mocks. Mocks are process-global: call once per process.

    `mocks`: the mock cloud (default `fleet.preview.mock_cloud.FleetMocks`); `also(fleet)`: an Output the run waits for
    as well (a caller's own view of the fleet's outputs)."""
    import pulumi
    from pulumi.runtime import mocks as pulumi_mocks
    from pulumi.runtime.config import set_all_config

    from fleet.preview import sdk_overrides
    from fleet.preview.mock_cloud import FleetMocks, RecordingMonitor

    sdk_overrides.apply()
    mocks = mocks or FleetMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack_config.stack, preview=False, monitor=monitor)
    values, secret_keys = _config_for_mocks(stack_config)
    set_all_config(values, secret_keys)

    outputs: dict[str, Any] = {}

    def program():
        from components.program import run

        fleet = run()
        shown = pulumi.Output.all(
            gatewayUrl=fleet.gateway_url,
            nodeAddresses=fleet.node_addresses,
            grafanaUrl=fleet.grafana_url,
            deployed=fleet.deployed,
        ).apply(outputs.update)
        return shown if also is None else pulumi.Output.all(shown, also(fleet))

    with cyclic_gc_paused():
        pulumi_mocks.test(program)()
    # Registration order follows the SDK's thread pool, not the program: sort so that two previews of the same
    # input are byte-identical (tree, --json, policy report).
    resources = sorted(monitor.registered, key=lambda r: r.urn)
    ids = {urn: registration.id for urn, registration in monitor.resources.items() if registration.id}
    return PreviewResult(stack=stack_config.stack, resources=resources, outputs=outputs, ids=ids)


def resource_tree(result: PreviewResult):
    """A rich Tree of the registered resources, by parent."""
    from rich.tree import Tree

    children: dict[str | None, list[RegisteredResource]] = {}
    for resource in result.resources:
        children.setdefault(resource.parent_urn, []).append(resource)
    known = {r.urn for r in result.resources}

    def label(resource: RegisteredResource) -> str:
        props = []
        for key in KEY_PROPERTIES.get(resource.type, ()):
            value = clean(resource.inputs.get(key))
            if value not in (None, "", [], {}):
                text = " ".join(str(value).split())
                props.append(f"{key}={text if len(text) <= 60 else text[:57] + '...'}")
        flags = [f for f, on in (("protect", resource.protect), ("retain", resource.retain_on_delete)) if on]
        kind = "[bold cyan]" if not resource.custom else "[green]"
        extra = f" [dim]{' '.join(props)}[/dim]" if props else ""
        marks = f" [yellow]({', '.join(flags)})[/yellow]" if flags else ""
        return f"{kind}{resource.type}[/] {resource.name}{extra}{marks}"

    tree = Tree(f"[bold]stack {result.stack}[/bold]")

    def add(node, parent_urn: str | None) -> None:
        for resource in children.get(parent_urn, []):
            add(node.add(label(resource)), resource.urn)

    roots = [urn for urn in children if urn is None or urn not in known]
    for urn in roots:
        add(tree, urn)
    return tree


def counts_table(result: PreviewResult):
    from rich.table import Table

    table = Table(title=f"Resources by type ({len(result.resources)} in all)")
    table.add_column("type")
    table.add_column("count", justify="right")
    for type_, count in sorted(result.counts.items()):
        table.add_row(type_, str(count))
    return table


SECRET_MASK = "[secret]"


def clean(value: Any) -> Any:
    """Plain JSON-able data with every secret value masked, so previews never print a secret."""
    from pulumi.runtime.rpc import is_rpc_secret

    if is_rpc_secret(value):
        return SECRET_MASK
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def to_json(result: PreviewResult) -> dict[str, Any]:
    return {
        "stack": result.stack,
        "counts": dict(sorted(result.counts.items())),
        "outputs": clean(result.outputs),
        "resources": [
            {
                "type": r.type,
                "name": r.name,
                "urn": r.urn,
                "custom": r.custom,
                "parent": r.parent_urn,
                "protect": r.protect,
                "retainOnDelete": r.retain_on_delete,
                "dependsOn": r.depends_on,
                "inputs": clean(r.inputs),
            }
            for r in result.resources
        ],
    }
