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

from fleet import catalog
from fleet.config import FLEET_KEY, PASSTHROUGH_PREFIXES, PROJECT, SECRET_KEYS, FleetSettings
from fleet.config_text import SettingProblem
from fleet.stack_names import environment_of_stack


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
    # Pulumi ESC environments the file imports: secret config may come from them instead of the file.
    esc_environments: tuple[str, ...] = ()

    def may_hold_secret(self, key: str) -> bool:
        """Whether the secret config `key` is set, or may be, by an imported ESC environment."""
        return key in self.secret_keys_set or bool(self.esc_environments)


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
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in folder.glob("Pulumi.*.yaml") if p.is_file())


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


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_:/@+-][A-Za-z0-9_.:/@+-]{0,63}")


def _key_path(loc: tuple[Any, ...]) -> str:
    """`ollama-fleet:fleet.nodeGroups[0].count`; a key that is not a plain word (a newline, a quote, a control or
    non-ASCII character, a very long one) is shown quoted and escaped, `.tags["a\\nb"]`, never printed raw."""
    path = FLEET_KEY
    for part in loc:
        if part == "[key]":  # pydantic's marker for a mapping's key (rather than its value)
            path += " (the key)"
        elif isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            path += f".{part}"
        else:
            path += f"[{show_value(part)}]"
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


# Deeper than any stack file needs (the deepest settings are six levels down); a parser that recursed into
# thousands of `[[[...` would run out of stack instead of saying what is wrong.
MAX_YAML_DEPTH = 64


class _StrictLoader(yaml.SafeLoader):
    """YAML as a stack file needs it: a key given twice is an error (plain YAML keeps the later one silently),
    no anchors or aliases (a few lines of aliases can expand to millions of values), and no nesting deeper
    than MAX_YAML_DEPTH."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "anchors and aliases (*name) are not allowed in a stack file; write the value out", event.start_mark
            )
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"values are nested more than {MAX_YAML_DEPTH} levels deep", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

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
                        None,
                        None,
                        f"key {show_value(key)} is given twice (first at line {first.line + 1}); each key once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line saying where the YAML is broken and how, in the file's own line and column numbers."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"not valid YAML: {' '.join(str(exc).split())}"
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = " ".join(str(exc.problem or exc.context or "").split())
    if exc.context and exc.problem:
        problem += f" ({' '.join(exc.context.split())})"
    if "'\\t'" in problem:
        problem += "; indent with spaces (YAML does not allow tabs there)"
    return f"not valid YAML{where}: {problem}"


def read_stack_yaml(path: Path) -> dict[str, Any]:
    """The `config:` mapping of a stack file."""
    return read_stack_document(path).get("config") or {}


def esc_environments(document: dict[str, Any], stack_file: str) -> tuple[str, ...]:
    """The Pulumi ESC environments a stack file imports (its top-level `environment:` list). Their values are
    only known to the Pulumi CLI: offline, a secret the stack needs may live there."""
    value = document.get("environment")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise StackConfigError(
            stack_file, [f"environment: must be a list of Pulumi ESC environment names (found {_kind(value)})"]
        )
    return tuple(value)


def read_stack_document(path: Path) -> dict[str, Any]:
    """The whole stack file: its `config:` mapping and, beside it, the ESC `environment:` it imports."""
    name = path.name
    if not path.is_file():
        raise StackConfigError(name, [f"stack file not found at {path}"])
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader) or {}  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise StackConfigError(name, [_yaml_problem(exc)]) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise StackConfigError(name, [f"cannot be read as UTF-8 text ({exc})"]) from None
    if not isinstance(document, dict) or not isinstance(document.get("config", {}), dict):
        found = document if not isinstance(document, dict) else document.get("config")
        raise StackConfigError(name, [f"the file must be a mapping with a `config:` mapping (found {_kind(found)})"])
    return document


def _kind(value: Any) -> str:
    """What a YAML value is, in the words of a stack file."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping" if isinstance(value, dict) else "no value"


def check_keys(config: dict[str, Any], stack_file: str) -> frozenset[str]:
    """Top-level key rules: known keys only, secrets stored encrypted. Returns the secret keys that are set."""
    problems: list[str] = []
    secrets_set: set[str] = set()
    for key, value in config.items():
        if key == FLEET_KEY:
            continue
        if not isinstance(key, str) or not _PLAIN_KEY.fullmatch(key):
            problems.append(
                f"config[{show_value(key)}]: not a config key; allowed: {PROJECT}:<key> or a provider's "
                f"{', '.join(PASSTHROUGH_PREFIXES)}<key>, written as a plain word"
            )
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


def _file_problems(settings: FleetSettings, secrets_set: frozenset[str], root: Path, esc: bool = False) -> list[str]:
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
    if settings.gateway.tls.mode == "provided" and not esc:  # an imported ESC environment may hold them
        missing = [key for key in (f"{PROJECT}:tlsCertificate", f"{PROJECT}:tlsPrivateKey") if key not in secrets_set]
        if missing:
            problems.append(
                f"{_key_path(('gateway', 'tls', 'mode'))}: `provided` needs the secret config {' and '.join(missing)} "
                f"(pulumi config set --secret {missing[0].split(':', 1)[1]} < file.pem) (got \"provided\")"
            )
    return problems


AWS_REGION_KEY = "aws:region"


def _provider_problems(config: dict[str, Any], settings: FleetSettings) -> list[str]:
    """The AWS provider creates every resource in `aws:region`: when the file sets it, it is a known region, and
    the fleet's own aws.region (where its zones are) on an AWS stack."""
    if AWS_REGION_KEY not in config:
        return []
    value = config[AWS_REGION_KEY]
    if settings.aws is not None:
        if value != settings.aws.region:
            return [
                f"{AWS_REGION_KEY}: must be {settings.aws.region}, the region of {FLEET_KEY}.aws.region (the AWS "
                f"provider creates every resource in {AWS_REGION_KEY}; the zones are in aws.region) (got {show_value(value)})"
            ]
    elif value not in catalog.AWS_REGIONS:
        return [f"{AWS_REGION_KEY}: unknown AWS region; allowed: {', '.join(catalog.AWS_REGIONS)} (got {show_value(value)})"]
    return []


def load_stack_file(path: Path, stack: str | None = None) -> StackConfig:
    document = read_stack_document(path)
    config = document.get("config") or {}
    esc = esc_environments(document, path.name)
    secrets_set = check_keys(config, path.name)
    settings = parse_settings(config[FLEET_KEY], path.name)
    problems = _provider_problems(config, settings) + _file_problems(settings, secrets_set, path.parent, bool(esc))
    if problems:
        raise StackConfigError(path.name, problems)
    name = stack or path.name[len("Pulumi.") : -len(".yaml")]
    check_environment(settings, name, path.name)
    return StackConfig(stack=name, path=path, settings=settings, secret_keys_set=secrets_set, raw_config=config,
                       esc_environments=esc)

