"""What the user docs point at exists: every repository path they cite, and every `fleet.…` module or attribute.

Files move and functions are renamed; a document that still names the old place sends a reader nowhere.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = r"(?:fleet|components|policies|tests|bench|scripts|tools|exporter|\.github)"
PATH = re.compile(rf"(?<![\w./:-]){TOP}/[\w./*<>-]+")
# A dotted `fleet.x` not preceded by `:` or `-` (Pulumi config keys like `ollama-fleet:fleet.nodeGroups` and
# label names like `ollama-fleet.role` are not modules).
DOTTED = re.compile(r"(?<![\w.:-])fleet(?:\.\w+)+")
PLACEHOLDER = re.compile(r"<\w+>|\bS\b|\bN\b")


def cited_paths(text: str) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in PATH.finditer(line):
            found.append((number, match.group(0).rstrip(".,:;)")))
    return found


def cited_names(text: str) -> list[tuple[int, str]]:
    return [(n, m.group(0).rstrip(".")) for n, line in enumerate(text.splitlines(), 1) for m in DOTTED.finditer(line)]


def path_exists(path: str, root: Path = ROOT) -> bool:
    pattern = PLACEHOLDER.sub("*", path)
    return bool(list(root.glob(pattern))) if "*" in pattern else (root / path).exists()


def name_resolves(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_a_doc_cites_exists(doc):
    missing = [f"{doc.name}:{n} {p}" for n, p in cited_paths(doc.read_text()) if not path_exists(p)]
    assert not missing, "the docs cite paths that do not exist:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_fleet_module_or_attribute_a_doc_names_exists(doc):
    missing = [f"{doc.name}:{n} {name}" for n, name in cited_names(doc.read_text()) if not name_resolves(name)]
    assert not missing, "the docs name modules or attributes that do not exist:\n  " + "\n  ".join(missing)


def test_a_moved_file_or_renamed_function_is_caught(tmp_path):
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet/here.py").write_text("")
    text = "see `fleet/here.py`, `fleet/gone.py` and policies/config.<stack>.json\n"
    assert [p for _, p in cited_paths(text) if not path_exists(p, tmp_path)] == [
        "fleet/gone.py",
        "policies/config.<stack>.json",
    ]
    assert name_resolves("fleet.config.FleetSettings")
    assert not name_resolves("fleet.config.NoSuchThing")
    assert not name_resolves("fleet.no_such_module")
    assert cited_names("label `ollama-fleet.role`, key ollama-fleet:fleet.nodeGroups, `fleet.ports`") == [(1, "fleet.ports")]


def layout_block(readme: str) -> str:
    """The tree drawn under the README's Layout heading."""
    section = readme.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_layout_names_every_module_and_package_of_the_core():
    block = layout_block((ROOT / "README.md").read_text())
    words = set(re.findall(r"[\w*]+(?:\.py)?/?", block))
    globbed = [w for w in words if "*" in w]
    missing = []
    for entry in sorted((ROOT / "fleet").iterdir()):
        if entry.name.startswith(("_", ".")) or entry.name == "__pycache__":
            continue
        name = entry.name + "/" if entry.is_dir() else entry.name
        if entry.is_dir() and not (entry / "__init__.py").exists():
            continue
        if name not in words and not any(Path(name).match(g) for g in globbed):
            missing.append(f"fleet/{name}")
    assert not missing, "the README's layout does not name: " + ", ".join(missing)
