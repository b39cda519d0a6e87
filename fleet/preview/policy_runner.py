"""Run the policy pack offline against the resources a mocked run of the program registered.

`evaluate` does what the Pulumi engine and the pack's analyzer server do during `pulumi preview --policy-pack
policies --policy-pack-config policies/config.<stack>.json`, without either: it reconciles the policy config
the way the CLI does (schema defaults, then `all`, then per-policy entries), builds pulumi_policy's
`ResourceValidationArgs` for every resource and one `StackValidationArgs` for the stack, and calls the very
policy objects `policies/__main__.py` registers (`policies.rules.POLICIES`). Unknown values raise
`UnknownValueError` and become an advisory "can't run during preview" note, as in the analyzer.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from inspect import isawaitable
from pathlib import Path
from typing import Any, Iterable, Mapping

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.deserialize import SPECIAL_SIG_KEY, _deserialize_property
from pulumi_policy.policy import _NotApplicableError
from pulumi_policy.proxy import (
    UNKNOWN_STRING_VALUE,
    UnknownValueError,
    unknown_checking_proxy,
)

from fleet.policy_config import PolicyConfigError, load_config_file
from fleet.resources import RegisteredResource

_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
_RESOURCE_REF_SIG = "5cf8f73096256a8f31e491e813e4eb8e"
_OUTPUT_VALUE_SIG = "d0e6a833031e9bbcd3f4e8bde6ca49a4"

_JSON_TYPES = {
    "string": str,
    "number": (int, float),
    "integer": int,
    "boolean": bool,
    "array": list,
    "object": dict,
}


@dataclass(frozen=True)
class Violation:
    policy: str
    enforcement: str  # "advisory" or "mandatory"
    message: str
    urn: str = ""
    resource_type: str = ""
    resource_name: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "policy": self.policy,
            "enforcement": self.enforcement,
            "message": self.message,
            "urn": self.urn,
            "resourceType": self.resource_type,
            "resourceName": self.resource_name,
        }


@dataclass
class PolicyReport:
    stack: str
    enforcement: dict[str, str]  # policy -> level after reconciling the config
    violations: list[Violation] = field(default_factory=list)
    not_applicable: list[tuple[str, str]] = field(default_factory=list)
    resources_checked: int = 0

    @property
    def mandatory(self) -> list[Violation]:
        return [v for v in self.violations if v.enforcement == EnforcementLevel.MANDATORY.value]

    @property
    def advisory(self) -> list[Violation]:
        return [v for v in self.violations if v.enforcement == EnforcementLevel.ADVISORY.value]

    @property
    def mandatory_failed(self) -> bool:
        return bool(self.mandatory)

    def by_policy(self, name: str) -> list[Violation]:
        return [v for v in self.violations if v.policy == name]

    def passed(self) -> list[str]:
        failing = {v.policy for v in self.violations}
        return [p for p, level in self.enforcement.items() if level != "disabled" and p not in failing]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "mandatoryFailed": self.mandatory_failed,
            "enforcement": dict(self.enforcement),
            "violations": [v.to_dict() for v in self.violations],
            "passed": self.passed(),
        }

    def render(self):
        """A rich renderable: one row per violation and a verdict line."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        parts: list[Any] = []
        if self.violations:
            table = Table(title=f"Policy violations — stack {self.stack}", show_lines=True)
            table.add_column("policy", no_wrap=True)
            table.add_column("level", no_wrap=True)
            table.add_column("resource")
            table.add_column("message")
            for v in sorted(self.violations, key=lambda v: (v.enforcement != "mandatory", v.policy, v.resource_name)):
                style = "bold red" if v.enforcement == "mandatory" else "yellow"
                resource = f"{v.resource_type} {v.resource_name}".strip() or v.urn or "(stack)"
                table.add_row(v.policy, Text(v.enforcement, style=style), resource, v.message)
            parts.append(table)
        passed = self.passed()
        if passed:
            parts.append(Text(f"passed: {', '.join(passed)}", style="green"))
        if self.mandatory_failed:
            verdict = Text(f"policy verdict: FAIL — {len(self.mandatory)} mandatory violation(s)", style="bold red")
        elif self.violations:
            verdict = Text(f"policy verdict: pass with {len(self.advisory)} advisory violation(s)", style="yellow")
        else:
            verdict = Text(f"policy verdict: pass ({len(passed)} policies)", style="bold green")
        parts.append(verdict)
        return Group(*parts)


# ------------------------------------------------------------------------------------------- config


def _level(value: Any, where: str) -> EnforcementLevel:
    try:
        return EnforcementLevel(value.value if isinstance(value, EnforcementLevel) else value)
    except ValueError:
        allowed = ", ".join(level.value for level in EnforcementLevel)
        raise PolicyConfigError(f"{where}: {value!r} is not an enforcement level; allowed: {allowed}") from None


def _check_schema(policy: Policy, props: Mapping[str, Any]) -> list[str]:
    schema = policy.config_schema
    if schema is None:
        return []
    problems = [f"{policy.name}: {key} is required" for key in schema.required or [] if key not in props]
    for key, value in props.items():
        spec = schema.properties.get(key)
        if not spec or "type" not in spec:
            continue
        expected = _JSON_TYPES.get(spec["type"])
        if expected and (not isinstance(value, expected) or (spec["type"] in ("number", "integer") and isinstance(value, bool))):
            problems.append(f"{policy.name}: {key}: expected {spec['type']}, got {json.dumps(value)}")
    return problems


def reconcile(
    policies: Iterable[Policy],
    pack_level: EnforcementLevel,
    config: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[dict[str, EnforcementLevel], dict[str, dict[str, Any]]]:
    """Each policy's enforcement level and config properties, as the Pulumi CLI reconciles them.

    Start from the policy's own level (else the pack's) and its schema defaults; apply `all`, then the
    per-policy entries of the config file; then `overrides` the same way.
    """
    policies = list(policies)
    names = {p.name for p in policies}
    levels = {p.name: p.enforcement_level or pack_level for p in policies}
    props: dict[str, dict[str, Any]] = {
        p.name: {k: v["default"] for k, v in (p.config_schema.properties if p.config_schema else {}).items() if "default" in v}
        for p in policies
    }
    for source, layer in (("config", config or {}), ("overrides", overrides or {})):
        if "all" in layer:
            value = layer["all"]
            level = value.get("enforcementLevel") if isinstance(value, Mapping) else value
            if level is not None:
                every = _level(level, f"{source}: all")
                levels = {name: every for name in levels}
        for name, value in layer.items():
            if name == "all":
                continue
            if name not in names:
                raise PolicyConfigError(f"{source}: no policy named {name!r}; policies: {', '.join(sorted(names))}")
            if isinstance(value, (str, EnforcementLevel)):
                levels[name] = _level(value, f"{source}: {name}")
            elif isinstance(value, Mapping):
                value = dict(value)
                if "enforcementLevel" in value:
                    levels[name] = _level(value.pop("enforcementLevel"), f"{source}: {name}")
                props[name].update(value)
            else:
                raise PolicyConfigError(f"{source}: {name}: must be an enforcement level or an object")
    problems = [problem for p in policies for problem in _check_schema(p, props[p.name])]
    if problems:
        raise PolicyConfigError("policy config is invalid: " + "; ".join(problems))
    return levels, props


# --------------------------------------------------------------------------------------- resources


def plain(value: Any) -> Any:
    """A recorded (RPC-serialized) property as a policy sees it: secrets unwrapped, assets as objects,
    resource references as their id (or URN), output values as their value (unknown when absent)."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        sig = value.get(SPECIAL_SIG_KEY)
        if sig == _SECRET_SIG:
            return plain(value.get("value"))
        if sig == _RESOURCE_REF_SIG:
            return value.get("id") or value.get("urn")
        if sig == _OUTPUT_VALUE_SIG:
            return plain(value["value"]) if "value" in value else UNKNOWN_STRING_VALUE
        if sig is not None:
            return _deserialize_property(value)
        return {k: plain(v) for k, v in value.items()}
    return value


def _options(resource: RegisteredResource) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=resource.protect,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
        parent=resource.parent_urn,
    )


def _provider_ref_urn(reference: str | None) -> str | None:
    # A provider reference is "<urn>::<id>"; the URN itself contains "::" separators.
    if not reference:
        return None
    return reference.rsplit("::", 1)[0] if reference.count("::") > 3 else reference


class _LazyProxy(Mapping):
    """`unknown_checking_proxy(value)`, built when a policy first reads it. Most policies look at a resource's type
    and never at the properties of resources they do not judge; each policy still gets its own proxy, as from the
    analyzer."""

    __slots__ = ("_value", "_proxy")

    def __init__(self, value: Any) -> None:
        self._value = value
        self._proxy: Any = None

    def _target(self) -> Any:
        if self._proxy is None:
            self._proxy = unknown_checking_proxy(self._value)
        return self._proxy

    def __getitem__(self, key: Any) -> Any:
        return self._target()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._target()[key] = value

    def __iter__(self):
        return iter(self._target())

    def __len__(self) -> int:
        return len(self._target())


class _PlainCache:
    """Each resource's inputs (and state) as policies see them, computed once for all policies. Every policy still
    gets its own proxy over them (as from the analyzer, which deserializes per policy): the proxy copies the
    containers, so what one policy does to its arguments never reaches another."""

    def __init__(self) -> None:
        self._inputs: dict[str, Any] = {}
        self._state: dict[str, dict[str, Any]] = {}

    def inputs(self, resource: RegisteredResource) -> Any:
        if resource.urn not in self._inputs:
            self._inputs[resource.urn] = plain(resource.inputs)
        return self._inputs[resource.urn]

    def state(self, resource: RegisteredResource) -> dict[str, Any]:
        """Outputs over inputs, as the engine's state holds them."""
        if resource.urn not in self._state:
            self._state[resource.urn] = {**self.inputs(resource), **plain(resource.outputs or {})}
        return self._state[resource.urn]


def _provider(
    resource: RegisteredResource, by_urn: Mapping[str, RegisteredResource], cache: _PlainCache | None = None
) -> PolicyProviderResource | None:
    urn = _provider_ref_urn(resource.provider)
    provider = by_urn.get(urn) if urn else None
    if provider is None:
        return None
    props = (cache or _PlainCache()).inputs(provider)
    return PolicyProviderResource(provider.type, _LazyProxy(props), provider.urn, provider.name)


def _run(policy: Policy, args: Any, report) -> None:
    result = policy.validate(args, report)
    if isawaitable(result):
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(result)
        finally:
            loop.close()


def _rules_module():
    from policies import rules

    return rules


def evaluate(
    resources: list[RegisteredResource],
    stack: str,
    enforcement_overrides: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    policies: list[Policy] | None = None,
    pack_level: EnforcementLevel | None = None,
) -> PolicyReport:
    """Run the pack's policies on `resources`; config defaults to policies/config.<stack>.json."""
    rules = _rules_module()
    policies = list(policies if policies is not None else rules.POLICIES)
    if config is None:
        config = load_config_file(stack)
    levels, props = reconcile(policies, pack_level or rules.PACK_ENFORCEMENT, config, enforcement_overrides)
    report = PolicyReport(stack=stack, enforcement={name: level.value for name, level in levels.items()})
    by_urn = {r.urn: r for r in resources}
    cache = _PlainCache()

    def reporter(policy: Policy, level: EnforcementLevel, resource: RegisteredResource | None):
        def report_violation(message: str, urn: str | None = None) -> None:
            target = by_urn.get(urn) if urn else resource
            report.violations.append(
                Violation(
                    policy=policy.name,
                    enforcement=level.value,
                    message=message or policy.description,
                    urn=(urn or (resource.urn if resource else "")),
                    resource_type=target.type if target else "",
                    resource_name=target.name if target else "",
                )
            )

        return report_violation

    def preview_note(policy: Policy, resource: RegisteredResource | None, error: UnknownValueError) -> None:
        report.violations.append(
            Violation(
                policy=policy.name,
                enforcement=EnforcementLevel.ADVISORY.value,
                message=f"can't run policy '{policy.name}' during preview: {error.message}",
                urn=resource.urn if resource else "",
                resource_type=resource.type if resource else "",
                resource_name=resource.name if resource else "",
            )
        )

    active = [(p, levels[p.name]) for p in policies if levels[p.name] != EnforcementLevel.DISABLED]
    for policy, level in active:
        if level == EnforcementLevel.REMEDIATE:
            level = EnforcementLevel.MANDATORY  # a violation left after remediation blocks, as in the analyzer
        if isinstance(policy, ResourceValidationPolicy):
            for resource in resources:
                args = ResourceValidationArgs(
                    resource.type,
                    _LazyProxy(cache.inputs(resource)),
                    resource.urn,
                    resource.name,
                    _options(resource),
                    _provider(resource, by_urn, cache),
                    dict(props[policy.name]),
                )
                try:
                    _run(policy, args, reporter(policy, level, resource))
                except UnknownValueError as error:
                    preview_note(policy, resource, error)
                except _NotApplicableError as error:
                    report.not_applicable.append((policy.name, error.reason or ""))
        elif isinstance(policy, StackValidationPolicy):
            stack_resources = _stack_resources(resources, by_urn, cache)
            args = StackValidationArgs(stack_resources, dict(props[policy.name]))
            try:
                _run(policy, args, reporter(policy, level, None))
            except UnknownValueError as error:
                preview_note(policy, None, error)
            except _NotApplicableError as error:
                report.not_applicable.append((policy.name, error.reason or ""))
    report.resources_checked = len(resources)
    return report


def _stack_resources(
    resources: list[RegisteredResource], by_urn: Mapping[str, RegisteredResource], cache: _PlainCache | None = None
) -> list[PolicyResource]:
    """PolicyResources with outputs over inputs (what the engine's state holds), parents and dependencies linked."""
    cache = cache or _PlainCache()
    built: dict[str, PolicyResource] = {}
    for r in resources:
        built[r.urn] = PolicyResource(
            r.type, _LazyProxy(cache.state(r)), r.urn, r.name, _options(r), _provider(r, by_urn, cache), None, [], {}
        )
    for r in resources:
        resource = built[r.urn]
        if r.parent_urn in built:
            resource.parent = built[r.parent_urn]
        resource.dependencies.extend(built[d] for d in r.depends_on if d in built)
        resource.property_dependencies.update(
            {key: [built[u] for u in urns if u in built] for key, urns in r.property_dependencies.items()}
        )
    return list(built.values())
