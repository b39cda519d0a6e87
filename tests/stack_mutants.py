"""Hostile variants of the real stack files (Pulumi.dev/staging/prod.yaml), as hypothesis strategies.

A mutant is one of the project's own stack files with one change at a random key path: the value replaced by
a hostile one (a wrong type, an extreme or non-finite number, a string with a newline, NUL, quotes, shell or
nginx metacharacters, right-to-left or zero-width characters, 10,000 characters, deep nesting), a key added
that no model knows, a key given twice, a key removed, or an item added to a list. `Mutant.text` is the YAML a
user could have written (duplicate keys included); `Mutant.where` the dotted key path it changed, as the
stack-file errors spell it.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
STACKS = ("dev", "staging", "prod")
DOCUMENTS = {stack: yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text()) for stack in STACKS}
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_:/@+-][A-Za-z0-9_.:/@+-]{0,63}")


# --- values ----------------------------------------------------------------------------------------------------

SPECIAL_NUMBERS = [
    0, -1, 1, -0.0, 0.5, 1.5, 255, 256, 65_535, 65_536, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, 10**30, -(10**30),
    1e308, -1e308, 5e-324, 1e-300, float("inf"), float("-inf"), float("nan"),
]
SPECIAL_STRINGS = [
    "", " ", "\n", "x\ny", "5m\n", "x\r", "x\t", "a\x00b", "\x00", "'", '"', "'x\"", "\\", "$(touch /tmp/fleet-fuzz)",
    "`id`", "x;y", "x; return 200 x;", "x } server { listen 1; }", "{}", "[]", "{x: y}", "- x", "x: y", "#x", "&x",
    "*x", "!!python/object/apply:os.system", "%{x}", "{{ x }}", "$host", "${x}",
    "\u202eevil", "a\u200bb", "\ufeffx", "\U0001f600", "١٦m", "ｘ", "ß", "İ",
    "x" * 10_000, "9" * 400, "~", "null", "yes", "no", "on", "0x1F", "0o17", "1e3", "1_000", ".inf", ".nan",
    "2024-01-01", "12:30", "-1", "0", "1", "true", "local-cpu", "us-east-1", "127.0.0.1", "0.0.0.0/0", "::/0",
    "http://x", "https://", "a@b", "sha256:", "latest", "ollama/ollama:latest",
]
HOSTILE_CHARS = "ab01 .-_:/@\n\r\t\x00'\"\\$`;{}[]#&*!%|<>=,?~\u202e\u200b\ufeff\U0001f600١ｘ"

scalars = st.one_of(
    st.sampled_from([True, False, None]),
    st.sampled_from(SPECIAL_NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL_STRINGS),
    st.text(alphabet=HOSTILE_CHARS, max_size=24),
)


def nested(depth: int) -> Any:
    value: Any = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(alphabet=HOSTILE_CHARS, min_size=1, max_size=8), scalars, max_size=3),
    st.integers(min_value=2, max_value=90).map(nested),
)


# --- the document ----------------------------------------------------------------------------------------------


class Duplicated:
    """A mapping whose YAML gives one key twice (the first value, then `again`)."""

    def __init__(self, mapping: dict, key: Any, again: Any):
        self.mapping, self.key, self.again = mapping, key, again


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # a value written twice is written out twice, as a person would
        return True


def _represent_duplicated(dumper: yaml.SafeDumper, data: Duplicated) -> yaml.MappingNode:
    pairs = [(dumper.represent_data(k), dumper.represent_data(v)) for k, v in data.mapping.items()]
    pairs.append((dumper.represent_data(data.key), dumper.represent_data(data.again)))
    return yaml.MappingNode("tag:yaml.org,2002:map", pairs)


_Dumper.add_representer(Duplicated, _represent_duplicated)


def to_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)


def key_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path below `node` (mapping keys and list indexes)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += key_paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += key_paths(child, (*prefix, index))
    return found


def dotted(path: tuple) -> str:
    """A key path below `config:` as the errors spell it: `ollama-fleet:fleet.nodeGroups[0].count`."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part, default=str, ensure_ascii=True)}]"
    return text


class Mutant:
    def __init__(self, stack: str, kind: str, path: tuple, value: Any, text: str):
        self.stack = stack
        self.kind = kind  # set, unknown-key, duplicate-key, delete, append
        self.path = path  # below `config:`
        self.value = value
        self.text = text

    @property
    def file_name(self) -> str:
        return f"Pulumi.{self.stack}.yaml"

    @property
    def where(self) -> str:
        return dotted(self.path)

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        shown = json.dumps(self.value, default=str, ensure_ascii=True)
        return f"Mutant({self.stack}: {self.kind} {self.where} = {shown[:200]})"


def _at(config: dict, path: tuple) -> Any:
    node = config
    for part in path:
        node = node[part]
    return node


def near(original: Any) -> st.SearchStrategy:
    """Values of the original's own kind, around it and at the edges: a number of the same type, a string
    with something added, cut or changed; the ones a renderer would receive if validation let them through."""
    if isinstance(original, int):
        return st.one_of(
            st.integers(min_value=-2, max_value=max(2 * original, 64)),
            st.sampled_from([v for v in SPECIAL_NUMBERS if isinstance(v, int)]),
            st.integers(min_value=-(2**64), max_value=2**64),
        )
    if isinstance(original, float):
        return st.one_of(
            st.floats(min_value=0, max_value=max(2 * original, 1.0)),
            st.floats(min_value=0.9, max_value=1.0),
            st.sampled_from([v for v in SPECIAL_NUMBERS if isinstance(v, float)]),
            st.floats(allow_nan=False, allow_infinity=False),
        )
    suffix = st.one_of(st.sampled_from(SPECIAL_STRINGS[:40]), st.text(alphabet=HOSTILE_CHARS, min_size=1, max_size=8))
    return st.one_of(
        suffix.map(lambda s: original + s),
        suffix.map(lambda s: s + original),
        st.integers(min_value=0, max_value=max(len(original) - 1, 0)).map(lambda n: original[:n]),
        st.sampled_from([original.upper(), original.replace(".", ".."), original * 30, f"{original[:1]}9999999{original[1:]}"]),
        st.sampled_from(SPECIAL_STRINGS),
        st.builds("{}{}".format, st.integers(min_value=0, max_value=10**7), st.sampled_from(["ms", "s", "m", "h", "d", "w", "y"])),
    )


def _leaf(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


@st.composite
def leaf_mutants(draw, documents: dict[str, dict] | None = None) -> Mutant:
    """One string or number of a stack set to a value of its own kind (see `near`)."""
    documents = documents or DOCUMENTS
    stack = draw(st.sampled_from(sorted(documents)))
    document = copy.deepcopy(documents[stack])
    config = document["config"]
    path = draw(st.sampled_from([p for p in key_paths(config) if _leaf(_at(config, p))]))
    value = draw(near(_at(config, path)))
    _at(config, path[:-1])[path[-1]] = value
    return Mutant(stack, "set", path, value, to_yaml(document))


@st.composite
def mutants(draw, stacks: tuple[str, ...] = STACKS, kinds: tuple[str, ...] | None = None, value_strategy=values) -> Mutant:
    stack = draw(st.sampled_from(stacks))
    document = copy.deepcopy(DOCUMENTS[stack])
    config = document["config"]
    paths = key_paths(config)
    kind = draw(st.sampled_from(kinds or ("set", "set", "set", "set", "unknown-key", "duplicate-key", "delete", "append")))
    if kind in ("set", "delete"):
        path = draw(st.sampled_from(paths))
    elif kind == "append":
        path = draw(st.sampled_from([p for p in paths if isinstance(_at(config, p), list)]))
    else:
        path = draw(st.sampled_from([p for p in paths if isinstance(_at(config, p), dict)]))
    value = draw(value_strategy)
    parent = _at(config, path[:-1])
    last = path[-1]
    if kind == "set":
        parent[last] = value
    elif kind == "delete":
        del parent[last]
    elif kind == "append":
        parent[last].append(value)
        path = (*path, len(parent[last]) - 1)
    elif kind == "unknown-key":
        key = draw(st.one_of(st.sampled_from(["extra", "Count", "count ", "NAME", "node_groups"]), st.text(alphabet=HOSTILE_CHARS, min_size=1, max_size=12)))
        mapping = parent[last]
        if key in mapping:
            key += "-unknown"
        mapping[key] = value
        path = (*path, key)
    else:  # duplicate-key
        mapping = parent[last]
        if not mapping:
            mapping["extra"] = 1
        key = draw(st.sampled_from(sorted(mapping, key=str)))
        parent[last] = Duplicated(mapping, key, draw(st.one_of(st.just(mapping[key]), value_strategy)))
        path = (*path, key)
    return Mutant(stack, kind, path, value, to_yaml(document))
