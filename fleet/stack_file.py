"""Read and validate a stack file (`Pulumi.<stack>.yaml`) into typed settings, with errors a person can act on.

Every problem becomes a `StackConfigError` naming the stack file, the key path (as written in YAML) and what
is allowed; callers print it and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from fleet.config import FLEET_KEY, PASSTHROUGH_PREFIXES, PROJECT, SECRET_KEYS, FleetSettings
from fleet.config_text import SettingProblem


class StackConfigError(Exception):
    """Bad stack configuration. `problems` holds one line per problem: `<key path>: <what is wrong>`."""

    def __init__(self, stack_file: str, problems: list[str]):
        self.stack_file = stack_file
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{stack_file}: invalid stack configuration\n{lines}")


@dataclass(frozen=True)
class StackConfig:
    """A validated stack: the typed settings plus which secret keys the file sets (values stay encrypted)."""

    stack: str
    path: Path
    settings: FleetSettings
    secret_keys_set: frozenset[str] = frozenset()
    raw_config: dict[str, Any] = field(default_factory=dict)


def project_root(start: Path | None = None) -> Path:
    """The folder holding Pulumi.yaml: from `start` (or the working directory) upwards, else the package's own."""
    here = (start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        if (folder / "Pulumi.yaml").is_file():
            return folder
    bundled = Path(__file__).resolve().parent.parent
    if (bundled / "Pulumi.yaml").is_file():
        return bundled
    raise FileNotFoundError("no Pulumi.yaml found in the working directory or its parents")


def stack_path(stack: str, root: Path | None = None) -> Path:
    return (root or project_root()) / f"Pulumi.{stack}.yaml"


def available_stacks(root: Path | None = None) -> list[str]:
    folder = root or project_root()
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in folder.glob("Pulumi.*.yaml"))


def _is_secure(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"secure"}


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings model that the location `loc` (pydantic error loc, by alias) points into."""
    model: type[BaseModel] = FleetSettings
    for part in loc:
        if isinstance(part, int):
            continue
        match = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if match is None:
            return model
        annotation = match.annotation
        candidates = [annotation, *get_args(annotation)]
        for arg in list(candidates):
            candidates.extend(get_args(arg))
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            return None
        model = nested
    return model


def _key_path(loc: tuple[Any, ...]) -> str:
    path = FLEET_KEY
    for part in loc:
        if part == "[key]":  # pydantic's marker for a mapping's key (rather than its value)
            path += " (the key)"
        else:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


_SHOWN_CHARS = 80


def show_value(value: Any) -> str:
    """A value as the stack file would spell it (JSON, ASCII-escaped so a newline or a non-ASCII digit is visible),
    shortened; never a Python repr."""
    text = json.dumps(value, default=str, ensure_ascii=True)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


# pydantic's messages for the strict types, in the words of a stack file.
_TYPE_MESSAGES = {
    "int_type": "must be a whole number (not a string, a boolean or a decimal)",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number (not a string or a boolean)",
    "finite_number": "must be a finite number (not .inf or .nan)",
    "bool_type": "must be true or false",
    "string_type": "must be a string (quote it in YAML)",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping of settings",
}


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = error["type"]
    problem = (error.get("ctx") or {}).get("error")
    if isinstance(problem, SettingProblem):
        shown = "" if problem.value is None else f" (got {show_value(problem.value)})"
        return f"{_key_path(loc + problem.key)}: {problem.message}{shown}"
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = ", ".join(_allowed_keys(parent)) if parent else "none"
        return f"{_key_path(loc)}: unknown key; allowed keys here: {allowed}"
    if kind == "missing":
        return f"{_key_path(loc)}: required key is missing"
    message = _TYPE_MESSAGES.get(kind, error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {show_value(got)})"
    return f"{_key_path(loc)}: {message}{shown}"


# Words of a stack name that decide its environment ("prod", "prod-eu", "team.production", "stg2").
_ENVIRONMENT_WORDS = {
    "dev": "dev",
    "development": "dev",
    "staging": "staging",
    "stage": "staging",
    "stg": "staging",
    "prod": "prod",
    "production": "prod",
    "prd": "prod",
}
_STRICTNESS = ("dev", "staging", "prod")


def environment_of_stack(stack: str) -> str | None:
    """The environment a stack's name decides: `prod`, `prod-eu`, `eu.production`, `prd2` are prod stacks
    (likewise dev and staging); a name with words of several environments gets the strictest; None when the
    name names none (`sandbox`), and the stack file's `environment` then stands alone."""
    words = (w.rstrip("0123456789") for w in re.split(r"[^a-z0-9]+", stack.lower()))
    found = {_ENVIRONMENT_WORDS[w] for w in words if w in _ENVIRONMENT_WORDS}
    return max(found, key=_STRICTNESS.index) if found else None


def check_environment(settings: FleetSettings, stack: str, stack_file: str) -> None:
    """The stack's name decides its environment: a stack file that declares another one is refused."""
    decided = environment_of_stack(stack)
    if decided is not None and settings.environment != decided:
        raise StackConfigError(
            stack_file,
            [
                f"{FLEET_KEY}.environment: is {settings.environment!r}, but stack {stack!r} is a {decided} stack (its "
                f"name decides the environment and which policies are strict); allowed: {decided}"
            ],
        )


def parse_settings(data: Any, stack_file: str) -> FleetSettings:
    """Validate the `ollama-fleet:fleet` object, translating pydantic's errors into `StackConfigError`."""
    if not isinstance(data, dict):
        raise StackConfigError(stack_file, [f"{FLEET_KEY}: must be a mapping of settings (see docs/configuration.md)"])
    try:
        return FleetSettings.model_validate(data)
    except ValidationError as exc:
        raise StackConfigError(stack_file, [_describe(e) for e in exc.errors()]) from None


class _StrictLoader(yaml.SafeLoader):
    """YAML as a stack file needs it: a key given twice is an error (plain YAML keeps the later one silently),
    and no anchors or aliases (a few lines of aliases can expand to millions of values)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "anchors and aliases (*name) are not allowed in a stack file; write the value out", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        None, None, "a mapping key must be a plain value", key_node.start_mark
                    ) from None
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        f"while reading the mapping at line {node.start_mark.line + 1}",
                        node.start_mark,
                        f"key {show_value(key)} is given twice (first at line {first.line + 1}); each key once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_stack_yaml(path: Path) -> dict[str, Any]:
    name = path.name
    if not path.is_file():
        raise StackConfigError(name, [f"stack file not found at {path}"])
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader) or {}  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise StackConfigError(name, [f"not valid YAML: {exc}"]) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise StackConfigError(name, [f"cannot be read as UTF-8 text ({exc})"]) from None
    if not isinstance(document, dict) or not isinstance(document.get("config", {}), dict):
        raise StackConfigError(name, ["the file must be a mapping with a `config:` mapping"])
    return document.get("config") or {}


def check_keys(config: dict[str, Any], stack_file: str) -> frozenset[str]:
    """Top-level key rules: known keys only, secrets stored encrypted. Returns the secret keys that are set."""
    problems: list[str] = []
    secrets_set: set[str] = set()
    for key, value in config.items():
        if key == FLEET_KEY:
            continue
        if key in SECRET_KEYS:
            if not _is_secure(value):
                problems.append(
                    f"{key}: must be a secret; store it with `pulumi config set --secret {key.split(':', 1)[1]} ...` "
                    "(a plain value would sit unencrypted in the repository)"
                )
            else:
                secrets_set.add(key)
            continue
        if key.startswith(f"{PROJECT}:"):
            allowed = ", ".join([FLEET_KEY, *SECRET_KEYS])
            problems.append(f"{key}: unknown key; allowed keys of {PROJECT}: {allowed}")
        elif not key.startswith(PASSTHROUGH_PREFIXES):
            problems.append(f"{key}: unknown namespace; allowed: {PROJECT}:*, {', '.join(PASSTHROUGH_PREFIXES)}*")
    if FLEET_KEY not in config:
        problems.append(f"{FLEET_KEY}: required key is missing (the whole fleet is configured under it)")
    if problems:
        raise StackConfigError(stack_file, problems)
    return frozenset(secrets_set)


def load_stack(stack: str, root: Path | None = None) -> StackConfig:
    """Load `Pulumi.<stack>.yaml` from the project root and validate it."""
    path = stack_path(stack, root)
    if not path.is_file():
        known = ", ".join(available_stacks(path.parent)) or "none"
        raise StackConfigError(path.name, [f"no stack file for stack {stack!r}; stacks here: {known}"])
    return load_stack_file(path, stack)


def _file_problems(settings: FleetSettings, secrets_set: frozenset[str], root: Path) -> list[str]:
    """What the settings alone cannot tell: GGUF files that must exist and be readable (relative to the project
    folder), and the secret keys a TLS mode needs."""
    from fleet.capacity import resolve_arch

    problems: list[str] = []
    for g, group in enumerate(settings.node_groups):
        for m, model in enumerate(group.models):
            if model.gguf is None:
                continue
            from fleet.gguf_arch import GgufError  # the gguf package (and numpy) only for stacks that name a file

            try:
                resolve_arch(model, root)
            except GgufError as exc:
                problems.append(
                    f"{_key_path(('nodeGroups', g, 'models', m, 'gguf'))}: {exc}; allowed: a readable GGUF file, "
                    f"absolute or relative to {root} (got {show_value(model.gguf)})"
                )
    if settings.gateway.tls.mode == "provided":
        missing = [key for key in (f"{PROJECT}:tlsCertificate", f"{PROJECT}:tlsPrivateKey") if key not in secrets_set]
        if missing:
            problems.append(
                f"{_key_path(('gateway', 'tls', 'mode'))}: `provided` needs the secret config {' and '.join(missing)} "
                f"(pulumi config set --secret {missing[0].split(':', 1)[1]} < file.pem) (got \"provided\")"
            )
    return problems


def load_stack_file(path: Path, stack: str | None = None) -> StackConfig:
    config = read_stack_yaml(path)
    secrets_set = check_keys(config, path.name)
    settings = parse_settings(config[FLEET_KEY], path.name)
    problems = _file_problems(settings, secrets_set, path.parent)
    if problems:
        raise StackConfigError(path.name, problems)
    name = stack or path.name[len("Pulumi.") : -len(".yaml")]
    check_environment(settings, name, path.name)
    return StackConfig(stack=name, path=path, settings=settings, secret_keys_set=secrets_set, raw_config=config)

