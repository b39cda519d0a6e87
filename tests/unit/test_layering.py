"""The layers import downward only, read from the source with `ast` (every import, also inside functions).

- The core (`fleet/`) imports no Pulumi SDK, no `components` and no `policies`, except the few app-layer
  modules that assemble them (APP_LAYER, each with its reason).
- The components (`components/`) wire Pulumi resources from the core; they never import the policies.
- The policy pack (`policies/`) judges what the program registers; it never imports the components.
- The plans (`fleet/plans/`) are pure whatever APP_LAYER says: no Pulumi, components or policies, and none of
  the app-layer modules either, so `fleet validate` runs them without the program.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("no_collection_during_parse")

PULUMI = ("pulumi", "pulumi_*", "pulumiverse_*")  # the SDK, its providers and the policy SDK
# Parts of the core that assemble the layers above it, and why each must (a path ending in "/" is a package).
APP_LAYER: Mapping[str, str] = {
    "fleet/preview/": "runs the Pulumi program (components.program) under Pulumi's mocks with a mock cloud, trims "
    "the SDK's per-resource work for that run, and hands the registrations to the policy pack's own policy "
    "objects (policies, pulumi_policy)",
    "fleet/render/bundle.py": "tells Pulumi's secret values apart in the resources the preview recorded",
    "fleet/local/docker_capture.py": "runs the Pulumi program under Pulumi's mocks for the Docker replay, with "
    "real values for the random and tls resources, and unwraps the secrets it recorded",
}
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fleet", (*PULUMI, "components", "policies")),
    ("components", ("policies",)),
    ("policies", ("components",)),
)
PLANS = "fleet/plans"


def _module_of(path: str) -> str:
    return path.removesuffix("/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _in(relative: str, allowed: Mapping[str, str]) -> bool:
    return any(relative == a or (a.endswith("/") and relative.startswith(a)) for a in allowed)


# What the plans must not import: the layers above the core and the core's own app-layer modules.
PLANS_RULES = ((PLANS, (*PULUMI, "components", "policies", *(_module_of(p) for p in APP_LAYER))),)


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return module.split(".", 1)[0].startswith(pattern[:-1])
    return module == pattern or module.startswith(pattern + ".")


def imported_modules(source: str, members: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the source: statements anywhere in the file, and
    `importlib.import_module("…")` / `__import__("…")` with a literal name. With `members`, `from a import b`
    also gives `a.b` (b may be a module)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            if members:
                for alias in node.names:
                    yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def violations(root: Path, rules=RULES, allowed: Mapping[str, str] = APP_LAYER, members: bool = False) -> list[str]:
    """`path:line imports module` for every import a layer must not make."""
    found = []
    for package, forbidden in rules:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if _in(relative, allowed):
                continue
            for line, module in imported_modules(path.read_text(), members):
                if any(_matches(module, pattern) for pattern in forbidden):
                    found.append(f"{relative}:{line} imports {module}")
    return found


def test_the_core_components_and_policies_import_only_downward():
    found = violations(ROOT)
    assert not found, (
        "imports against the layering (fleet/ is the pure core: no Pulumi, components or policies; components "
        "never import policies, policies never import components); move the code to the layer it belongs to, "
        "or, for a module that assembles the layers, name it with its reason in APP_LAYER:\n  " + "\n  ".join(found)
    )


def test_the_plans_import_nothing_above_the_core_and_no_app_layer_module():
    assert (ROOT / PLANS / "__init__.py").is_file()
    assert not [p for p in APP_LAYER if p.startswith(f"{PLANS}/")], "a plan may not be an app-layer module"
    found = violations(ROOT, rules=PLANS_RULES, allowed={}, members=True)
    assert not found, "fleet/plans is pure planning (no Pulumi, components, policies or app-layer module):\n  " + (
        "\n  ".join(found)
    )


def test_every_app_layer_module_exists_and_needs_its_exemption():
    for relative in APP_LAYER:
        paths = sorted((ROOT / relative).rglob("*.py")) if relative.endswith("/") else [ROOT / relative]
        assert paths and all(p.is_file() for p in paths), f"{relative} is listed in APP_LAYER but does not exist"
        needs = [m for p in paths for _, m in imported_modules(p.read_text()) if any(_matches(m, q) for q in RULES[0][1])]
        assert needs, f"{relative} imports nothing of Pulumi, components or policies: drop it from APP_LAYER"


def test_a_violating_import_is_caught_wherever_it_stands(tmp_path):
    files = {
        "fleet/__init__.py": "",
        "fleet/pure.py": "import json\nfrom fleet import config\nfrom . import sibling\n",
        "fleet/lazy.py": "def f():\n    import pulumi_aws.ec2\n",
        "fleet/sub/deep.py": "from components.gateway import Gateway\n",
        "fleet/dynamic.py": "import importlib\nrules = importlib.import_module('policies.rules')\n",
        "fleet/acme.py": "from pulumiverse_acme import Certificate\n",
        "fleet/assembler.py": "import pulumi\n",
        "components/gateway.py": "import pulumi\nfrom fleet import ports\nfrom policies import rules\n",
        "policies/rules.py": "from pulumi_policy import ResourceValidationPolicy\nfrom fleet import capacity\n"
        "from components import containers\n",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)

    found = violations(tmp_path, allowed={"fleet/assembler.py": "assembles the program"})

    assert found == [
        "fleet/acme.py:1 imports pulumiverse_acme",
        "fleet/dynamic.py:2 imports policies.rules",
        "fleet/lazy.py:2 imports pulumi_aws.ec2",
        "fleet/sub/deep.py:1 imports components.gateway",
        "components/gateway.py:3 imports policies",
        "policies/rules.py:3 imports components",
    ]
    assert "fleet/assembler.py:1 imports pulumi" in violations(tmp_path, allowed={})


def test_a_plan_importing_the_app_layer_is_caught_even_when_listed_as_app_layer(tmp_path):
    files = {
        "fleet/plans/__init__.py": "",
        "fleet/plans/good.py": "from fleet import ports\nfrom fleet.config import FleetSettings\n",
        "fleet/plans/member.py": "from fleet import preview\n",
        "fleet/plans/module.py": "def f():\n    import fleet.preview.mock_cloud\n",
        "fleet/plans/sdk.py": "from pulumi import Output\n",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)

    found = violations(tmp_path, rules=PLANS_RULES, allowed={}, members=True)

    assert found == [
        "fleet/plans/member.py:1 imports fleet.preview",
        "fleet/plans/module.py:2 imports fleet.preview.mock_cloud",
        "fleet/plans/sdk.py:1 imports pulumi",
        "fleet/plans/sdk.py:1 imports pulumi.Output",
    ]
