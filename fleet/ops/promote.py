"""Promotion: carry the tested, pinned values of one stack's config to the next (dev → staging → prod).

What moves is a fixed list (`PROMOTED`): what was tested — image tags and digests, the models with their
tags, quantizations, digests and context lengths, the Ollama knobs, and the gateway's rate limits, timeouts
and queue settings. Everything else in the target stays as it is: where it runs (target, AWS placement,
instance types, node counts, volumes), how it is reached (domain, TLS, ports, CIDRs, clients), monitoring,
policy enforcement, tags and every secret. A value that the source leaves to its default is removed from the
target too, so both stacks end up with the same effective value.

The target file is edited in place with ruamel.yaml's round-trip mode: key order, comments, quoting and flow
lists of everything that does not change stay as they were. Node groups are matched by name; a source group
without a counterpart in the target is reported, not created (its instance type and count are the target's
decision).

`plan_promotion` computes the candidate file and its diff without touching anything; `check_candidate`
validates it (stack_file), checks the capacity of every node group (fleet.capacity) and runs the offline
preview with the policy pack in a subprocess (Pulumi mocks are process-global); `write_candidate` replaces
the target file atomically.
"""

from __future__ import annotations

import copy
import difflib
import io
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from fleet.cli.errors import EXIT_CONFIG, EXIT_POLICY  # the codes `fleet preview` ends with
from fleet.config import FLEET_KEY
from fleet.stack_file import StackConfig, StackConfigError, load_stack_file, stack_path

# The promoted keys per stack pair, relative to `ollama-fleet:fleet`. `nodeGroups[*]` means: in every node
# group of the target that has a group of the same name in the source. Nothing sized for the source's hardware
# or traffic travels (node counts, instance types, `queuePerNode`, rate limits): the target keeps its own.
_GATEWAY_TIMEOUTS: tuple[tuple[str, ...], ...] = (
    ("gateway", "maxBodySize"),
    ("gateway", "connectTimeoutS"),
    ("gateway", "readTimeoutS"),
    ("gateway", "sendTimeoutS"),
    ("gateway", "retryAfterS"),
)
TRAVELS: dict[tuple[str, str], tuple[tuple[str, ...], ...]] = {
    # dev runs CPU models on a laptop-sized host: only the images and the gateway's protocol settings move on.
    ("dev", "staging"): (("images",), *_GATEWAY_TIMEOUTS),
    # staging runs the GPUs prod runs: the models and the Ollama knobs tested there move on too.
    ("staging", "prod"): (("images",), ("nodeGroups[*]", "models"), ("nodeGroups[*]", "ollama"), *_GATEWAY_TIMEOUTS),
}
PROMOTED: tuple[tuple[str, ...], ...] = tuple(dict.fromkeys(path for paths in TRAVELS.values() for path in paths))


def promoted_keys(source: str, target: str) -> tuple[tuple[str, ...], ...]:
    try:
        return TRAVELS[(source, target)]
    except KeyError:
        pairs = ", ".join(f"{a} → {b}" for a, b in TRAVELS)
        raise PromotionError(f"no promotion from {source} to {target}: promotions go {pairs}") from None


# Everything else stays as the target has it (docs/runbook.md, "Promotion", lists the notable keys).


class _Missing:
    """An absent key (the stack uses the default). Survives deepcopy as the same object."""

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return "<unset>"


_MISSING = _Missing()


class PromotionError(Exception):
    """The promotion cannot be planned (bad source or target file, unknown stack)."""


@dataclass(frozen=True)
class Change:
    path: str  # e.g. ollama-fleet:fleet.nodeGroups[chat].ollama.numParallel
    before: Any  # _MISSING when the key was absent
    after: Any

    @staticmethod
    def show(value: Any) -> str:
        return "(unset: default)" if value is _MISSING else json.dumps(value)


@dataclass
class PromotionPlan:
    source: str
    target: str
    target_path: Path
    original: str
    candidate: str
    changes: list[Change]
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.candidate != self.original

    @property
    def diff(self) -> str:
        name = self.target_path.name
        return "".join(
            difflib.unified_diff(
                self.original.splitlines(keepends=True),
                self.candidate.splitlines(keepends=True),
                fromfile=f"{name} (now)",
                tofile=f"{name} (promoted from {self.source})",
            )
        )


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    preview_output: str = ""
    preview_code: int | None = None
    exit_code: int = 0  # for the CLI: 2 invalid config, 3 mandatory policy/capacity failure, 1 preview crashed

    @property
    def ok(self) -> bool:
        return not self.problems

    def refuse(self, problem: str, exit_code: int) -> None:
        self.problems.append(problem)
        self.exit_code = self.exit_code or exit_code


# --- YAML round trip ----------------------------------------------------------------------------------------


def _yaml_for(text: str) -> YAML:
    """A round-trip YAML instance whose indentation reproduces `text` exactly (when one of the usual does)."""
    styles = [(2, 4, 2), (2, 2, 0), (4, 4, 2), (4, 6, 4), (4, 4, 0), (2, 4, 0)]
    for mapping, sequence, offset in styles:
        yaml = _yaml(mapping, sequence, offset)
        try:
            out = io.StringIO()
            yaml.dump(yaml.load(text), out)
        except YAMLError:
            break
        if out.getvalue() == text:
            return yaml
    return _yaml(*styles[0])


def _yaml(mapping: int, sequence: int, offset: int) -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    yaml.width = 4096  # never re-wrap long lines (image references, descriptions)
    return yaml


def _load(path: Path) -> tuple[YAML, str, Any]:
    text = path.read_text()
    yaml = _yaml_for(text)
    try:
        return yaml, text, yaml.load(text)
    except YAMLError as exc:
        raise PromotionError(f"{path.name}: not valid YAML: {exc}") from None


def _fleet(document: Any, name: str) -> CommentedMap:
    fleet = (document or {}).get("config", {}).get(FLEET_KEY) if isinstance(document, dict) else None
    if not isinstance(fleet, dict):
        raise PromotionError(f"{name}: no `{FLEET_KEY}` mapping under `config:`")
    return fleet


# --- value comparison and synchronisation ---------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Plain JSON data for comparison (ruamel's scalar and collection types are subclasses of the built-ins)."""
    return json.loads(json.dumps(value))


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _fresh(value: Any) -> Any:
    """A copy of a source node for the target, without the source's comments (they belong to its layout)."""
    value = copy.deepcopy(value)
    _drop_comments(value)
    return value


def _drop_comments(value: Any) -> None:
    if hasattr(value, "ca"):
        value.ca.items.clear()
        value.ca.comment = None
        value.ca.end = []
    if isinstance(value, dict):
        for item in value.values():
            _drop_comments(item)
    elif isinstance(value, list):
        for item in value:
            _drop_comments(item)


def _insert_position(target: dict, source: dict, key: str) -> int:
    """Where `key` goes in `target`: after the nearest key that precedes it in `source` and exists in `target`."""
    keys = list(source)
    for earlier in reversed(keys[: keys.index(key)]):
        if earlier in target:
            return list(target).index(earlier) + 1
    return 0


def _sync(parent: Any, key: Any, value: Any, source_parent: Any = None) -> None:
    """Make `parent[key]` equal to `value` (`_MISSING`: absent), changing as little of the target node as possible."""
    if value is _MISSING:
        if isinstance(parent, dict) and key in parent:
            del parent[key]
        return
    present = key in parent if isinstance(parent, dict) else key < len(parent)
    if not present:
        if isinstance(parent, dict) and isinstance(source_parent, dict) and hasattr(parent, "insert"):
            parent.insert(_insert_position(parent, source_parent, key), key, _fresh(value))
        elif isinstance(parent, dict):
            parent[key] = _fresh(value)
        else:
            parent.append(_fresh(value))
        return
    current = parent[key]
    if isinstance(current, dict) and isinstance(value, dict):
        for existing in [k for k in current if k not in value]:
            del current[existing]
        for sub_key, sub_value in value.items():
            _sync(current, sub_key, sub_value, value)
    elif isinstance(current, list) and isinstance(value, list):
        del current[len(value) :]
        for index, item in enumerate(value):
            _sync(current, index, item, value)
    elif not _same(current, value):
        parent[key] = _fresh(value)


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, sub in value.items():
            items.update(_flatten(sub, f"{prefix}.{key}"))
        return items or {prefix: {}}
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = {}
        for index, sub in enumerate(value):
            items.update(_flatten(sub, f"{prefix}[{index}]"))
        return items
    return {prefix: _plain(value)}


def _changes(before: Any, after: Any, prefix: str) -> list[Change]:
    old = {} if before is _MISSING else _flatten(_plain(before), prefix)
    new = {} if after is _MISSING else _flatten(_plain(after), prefix)
    changes = []
    for path in list(dict.fromkeys([*old, *new])):
        a, b = old.get(path, _MISSING), new.get(path, _MISSING)
        if a is _MISSING or b is _MISSING or not _same(a, b):
            changes.append(Change(path, a, b))
    return changes


# --- planning ---------------------------------------------------------------------------------------------------


def _groups_by_name(fleet: dict, name: str) -> dict[str, dict]:
    groups = fleet.get("nodeGroups")
    if not isinstance(groups, list):
        raise PromotionError(f"{name}: `{FLEET_KEY}.nodeGroups` must be a list")
    return {g.get("name"): g for g in groups if isinstance(g, dict)}


def _promote_into(
    source: dict, target: dict, notes: list[str], source_name: str, target_name: str, paths: tuple[tuple[str, ...], ...]
) -> list[Change]:
    changes: list[Change] = []
    source_groups = _groups_by_name(source, source_name)
    target_groups = _groups_by_name(target, target_name)
    for path in paths:
        head, leaf = path[0], path[-1]
        if head == "nodeGroups[*]":
            for group_name, target_group in target_groups.items():
                source_group = source_groups.get(group_name)
                if source_group is None:
                    continue
                before = copy.deepcopy(target_group.get(leaf, _MISSING))
                _sync(target_group, leaf, source_group.get(leaf, _MISSING), source_group)
                changes += _changes(before, target_group.get(leaf, _MISSING), f"{FLEET_KEY}.nodeGroups[{group_name}].{leaf}")
            continue
        source_parent: Any = source
        target_parent: Any = target
        for part in path[:-1]:
            next_source = source_parent.get(part, _MISSING) if isinstance(source_parent, dict) else _MISSING
            if part not in target_parent:
                if not (isinstance(next_source, dict) and leaf in next_source):
                    target_parent = None  # neither side sets it: nothing to do
                    break
                target_parent.insert(_insert_position(target_parent, source_parent, part), part, CommentedMap())
            source_parent, target_parent = next_source, target_parent[part]
        if target_parent is None:
            continue
        if not isinstance(source_parent, dict):
            source_parent = None
        value = source_parent.get(leaf, _MISSING) if source_parent is not None else _MISSING
        before = copy.deepcopy(target_parent.get(leaf, _MISSING))
        _sync(target_parent, leaf, value, source_parent)
        changes += _changes(before, target_parent.get(leaf, _MISSING), f"{FLEET_KEY}.{'.'.join(path)}")
    for group_name in source_groups:
        if group_name not in target_groups:
            notes.append(
                f"node group {group_name!r} of {source_name} has no group of that name in {target_name}: "
                f"its models and Ollama knobs are not promoted (add the group to {target_name} with its "
                "instanceType and count first)"
            )
    for group_name in target_groups:
        if group_name not in source_groups:
            notes.append(f"node group {group_name!r} of {target_name} has no counterpart in {source_name}: kept as it is")
    return changes


def _apply_deployed(source: dict, deployed: dict[str, Any]) -> None:
    """Make the source mapping say what the source really ran (its `deployed` output): every image reference, and
    the digest of each model pulled (node groups and models matched by name). Promotion then carries it."""
    images = deployed.get("images") or {}
    if images:
        source["images"] = {**(source.get("images") or {}), **images}
    groups = _groups_by_name(source, "source")
    for group_name, digests in (deployed.get("models") or {}).items():
        for model in (groups.get(group_name) or {}).get("models") or []:
            digest = (digests or {}).get(f"{model.get('name')}:{model.get('tag')}")
            if digest and not model.get("gguf"):
                model["digest"] = digest


def _pin_ami(target: CommentedMap, ami: str | None, notes: list[str], source: str) -> list[Change]:
    """The GPU nodes' AMI the source booted, pinned in the target (`aws.amiId`)."""
    aws = target.get("aws")
    if not isinstance(aws, dict):
        return []
    if not ami:
        notes.append(f"{source} reports no AMI (it has no GPU hosts): the target's aws.amiId stays as it is")
        return []
    before = _plain(aws["amiId"]) if "amiId" in aws else _MISSING
    if before == ami:
        return []
    aws["amiId"] = ami
    return [Change(f"{FLEET_KEY}.aws.amiId", before, ami)]


def plan_promotion(
    source: str, target: str, root: Path, source_text: str | None = None, deployed: dict[str, Any] | None = None
) -> PromotionPlan:
    """The target file with the promoted keys of `source` applied, its diff and the changed keys. Writes nothing.

    `source_text` is the source stack file as it was deployed (default: the working tree's); `deployed` the
    source's `deployed` output, whose image references, model digests and AMI are pinned into the target.
    """
    if source == target:
        raise PromotionError(f"source and target are the same stack ({source!r})")
    for stack in (source, target):
        if not stack_path(stack, root).is_file():
            raise PromotionError(f"no stack file Pulumi.{stack}.yaml in {root}")
    paths = promoted_keys(source, target)
    source_name = f"Pulumi.{source}.yaml"
    if source_text is None:
        source_text = stack_path(source, root).read_text()
    with tempfile.TemporaryDirectory(prefix="fleet-promote-source-") as tmp:
        copy_path = Path(tmp) / source_name
        copy_path.write_text(source_text)
        try:
            load_stack_file(copy_path, source)  # the source must be a valid, tested stack
        except StackConfigError as error:
            raise PromotionError(f"the source stack is not valid:\n{error}") from None
        _, _, source_doc = _load(copy_path)
    target_file = stack_path(target, root)
    yaml, original, target_doc = _load(target_file)
    notes: list[str] = []
    target_fleet = _fleet(target_doc, target_file.name)
    source_fleet = _fleet(source_doc, source_name)
    if deployed is not None:
        _apply_deployed(source_fleet, deployed)
    changes = _promote_into(source_fleet, target_fleet, notes, source_name, target_file.name, paths)
    if deployed is not None:
        changes += _pin_ami(target_fleet, deployed.get("amiId"), notes, source)
    out = io.StringIO()
    yaml.dump(target_doc, out)
    return PromotionPlan(source, target, target_file, original, out.getvalue(), changes, notes)


# --- checks -----------------------------------------------------------------------------------------------------


def _stage(plan: PromotionPlan, root: Path, folder: Path) -> Path:
    """A project folder holding the candidate target file; everything else links to the real project."""
    for entry in root.iterdir():
        if entry.name != plan.target_path.name:
            (folder / entry.name).symlink_to(entry)
    candidate = folder / plan.target_path.name
    candidate.write_text(plan.candidate)
    return candidate


def _capacity_problems(config: StackConfig, root: Path) -> list[str]:
    """Each node group that does not fit its instance: a GPU group its VRAM, a CPU group the RAM the stack declares
    (`local.memoryGib`; none declared, no verdict), as `fleet plan` and the policy pack judge them: with the
    rules of the Ollama release the stack's image deploys and the headroom its policy config sets."""
    from fleet.capacity import CapacityError, estimate_node, host_memory, version_of_image
    from fleet.policy_config import judged_headroom

    problems = []
    settings = config.settings
    headroom = judged_headroom(config.stack, settings.policy.vram_headroom)
    try:
        version = version_of_image(settings.images.ollama)
    except CapacityError as error:
        return [f"images.ollama: {error}"]
    for group in settings.node_groups:
        try:
            estimate = estimate_node(group, headroom, root, version, host_memory=host_memory(settings, group))
        except CapacityError as error:
            problems.append(f"node group {group.name!r}: {error}")
            continue
        if estimate.has_verdict and not estimate.fits:
            detail = "; ".join(estimate.problems) or f"needs {estimate.total / 2**30:.1f} GiB of {estimate.usable / 2**30:.1f} GiB usable"
            hint = f" (try: {'; '.join(estimate.suggestions[:2])})" if estimate.suggestions else ""
            where = (
                f"{estimate.memory / 2**30:.1f} GiB of RAM declared in local.memoryGib"
                if estimate.cpu_only
                else f"{estimate.gpus} × {estimate.vram_per_gpu / 2**30:.0f} GiB"
            )
            problems.append(
                f"node group {group.name!r} does not fit {group.instance_type} ({where}, {headroom:.0%} headroom): {detail}{hint}"
            )
    return problems


def run_preview(stack: str, project: Path, timeout_s: float = 600) -> tuple[int, str]:
    """`fleet preview --stack STACK --no-tree` in `project`, in a fresh process: (exit code, output)."""
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "fleet.cli", "preview", "--stack", stack, "--no-tree"],
            cwd=project, env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return 124, f"the offline preview did not finish within {timeout_s:.0f}s"
    return done.returncode, done.stdout + done.stderr


def check_candidate(plan: PromotionPlan, root: Path, preview: bool = True) -> Verdict:
    """Validate the candidate target file, check its capacity, and run the offline preview + policy pack on it."""
    verdict = Verdict()
    with tempfile.TemporaryDirectory(prefix="fleet-promote-") as tmp:
        project = Path(tmp)
        candidate = _stage(plan, root, project)
        try:
            config = load_stack_file(candidate, plan.target)
        except StackConfigError as error:
            verdict.refuse(f"the promoted {plan.target_path.name} would not be valid:\n{error}", EXIT_CONFIG)
            return verdict
        mandatory = config.settings.policy.enforcement == "mandatory"
        capacity = _capacity_problems(config, root)
        if capacity and not mandatory:
            verdict.warnings.extend(capacity)
        elif capacity:
            for problem in capacity:
                verdict.refuse(problem, EXIT_POLICY)
            return verdict  # no need to run the preview: the policy pack refuses the same
        if not preview:
            return verdict
        code, output = run_preview(plan.target, project)
        verdict.preview_code, verdict.preview_output = code, output
    if code == EXIT_POLICY:
        verdict.refuse(f"a mandatory policy fails on the promoted {plan.target} stack (offline preview exit {code})", code)
    elif code == EXIT_CONFIG:
        verdict.refuse(f"the offline preview refused the promoted {plan.target} configuration (exit {code})", code)
    elif code != 0:
        verdict.refuse(f"the offline preview of the promoted {plan.target} stack did not complete (exit {code})", 1)
    return verdict


def write_candidate(plan: PromotionPlan) -> None:
    """Replace the target file atomically (same folder, same permissions)."""
    path = plan.target_path
    mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(plan.candidate)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
