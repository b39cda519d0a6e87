"""The offline runner: the same policy objects as the pack, the CLI's config reconciliation, preview unknowns."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pulumi_policy
import pytest
import yaml
from policy_builders import CONTAINER, INSTANCE, ROOT, find, set_label, set_models
from pulumi_policy import EnforcementLevel
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE
from rich.console import Console

from fleet import contract
from fleet.policy_config import PolicyConfigError, load_config_file
from fleet.preview.policy_runner import evaluate, plain, reconcile
from fleet.stack_file import load_stack
from policies import rules

POLICIES = ROOT / "policies"


def _oversized(resources):
    for node in find(resources, CONTAINER, "ollama"):
        set_label(node, contract.LABELS.instance_type, "g4dn.xlarge")
        set_models(node, [{"name": "qwen2.5", "tag": "32b", "quantization": "q8_0", "numCtx": 8192, "keepLoaded": True, "digest": "sha256:" + "e" * 64}])
    return resources


def test_main_registers_the_rules_policies(monkeypatch):
    captured = {}

    class Recorder:
        def __init__(self, **kwargs):
            captured.update(kwargs)

    monkeypatch.setattr(pulumi_policy, "PolicyPack", Recorder)
    runpy.run_path(str(POLICIES / "__main__.py"), run_name="__main__")
    assert captured["name"] == "ollama-fleet"
    assert captured["policies"] is rules.POLICIES
    assert captured["enforcement_level"] is EnforcementLevel.MANDATORY
    assert len({p.name for p in rules.POLICIES}) == len(rules.POLICIES) >= 9


def test_rules_import_as_a_top_level_module_from_the_pack_folder():
    # What the Pulumi CLI does: run the pack's folder, where `import rules` finds rules.py.
    code = "import sys; sys.path.insert(0, sys.argv[1]); import rules; print(len(rules.POLICIES))"
    import subprocess

    done = subprocess.run([sys.executable, "-c", code, str(POLICIES)], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(rules.POLICIES)


def test_pulumi_policy_yaml_is_a_python_pack():
    meta = yaml.safe_load((POLICIES / "PulumiPolicy.yaml").read_text())
    assert meta["runtime"]["name"] == "python"
    assert (POLICIES / meta["runtime"]["options"]["virtualenv"]).resolve() == (ROOT / ".venv").resolve()
    requirements = (POLICIES / "requirements.txt").read_text()
    assert "pulumi-policy==" in requirements


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_config_file_enforcement_matches_the_stack(stack):
    config = load_config_file(stack)
    settings = load_stack(stack, ROOT).settings
    assert config["all"] == settings.policy.enforcement
    levels, _ = reconcile(rules.POLICIES, rules.PACK_ENFORCEMENT, config)
    assert {level.value for level in levels.values()} == {settings.policy.enforcement}


def test_dev_is_advisory_and_prod_blocks(resources_of):
    dev = evaluate(_oversized(resources_of("dev")), "dev")
    prod = evaluate(_oversized(resources_of("prod")), "prod")
    assert dev.by_policy("vram-fit") and not dev.mandatory_failed
    assert prod.by_policy("vram-fit") and prod.mandatory_failed
    assert {v.enforcement for v in prod.by_policy("vram-fit")} == {"mandatory"}


def test_overrides_disable_or_relax_policies(resources_of):
    resources = _oversized(resources_of("prod"))
    relaxed = evaluate(resources, "prod", enforcement_overrides={"all": "advisory"})
    assert relaxed.violations and not relaxed.mandatory_failed
    without = evaluate(resources, "prod", enforcement_overrides={"vram-fit": "disabled", "quantization-required": "disabled"})
    assert not without.by_policy("vram-fit") and "vram-fit" not in without.passed()
    assert not without.mandatory_failed


def test_reconcile_follows_the_cli_order():
    levels, props = reconcile(
        rules.POLICIES,
        EnforcementLevel.MANDATORY,
        {"all": "advisory", "tls-in-prod": {"enforcementLevel": "mandatory", "environments": ["prod", "staging"]}},
    )
    assert levels["tls-in-prod"] is EnforcementLevel.MANDATORY
    assert levels["vram-fit"] is EnforcementLevel.ADVISORY
    assert props["tls-in-prod"] == {"environments": ["prod", "staging"]}
    assert props["pinned-images"] == {"requireDigestIn": ["prod"]}  # schema default


@pytest.mark.parametrize(
    "config, message",
    [
        ({"vram-fits": "mandatory"}, "no policy named 'vram-fits'"),
        ({"all": "blocking"}, "not an enforcement level"),
        ({"vram-fit": {"minHeadroom": "ten percent"}}, "minHeadroom: expected number"),
        ({"pinned-images": 3}, "must be an enforcement level or an object"),
    ],
)
def test_bad_policy_config_is_refused(config, message):
    with pytest.raises(PolicyConfigError, match=message):
        reconcile(rules.POLICIES, EnforcementLevel.MANDATORY, config)


def test_unknown_values_do_not_pass_silently(resources_of):
    # In a preview, a label built from another resource's output is unknown: the analyzer says it cannot run.
    resources = resources_of("prod")
    for node in find(resources, CONTAINER, "ollama"):
        set_label(node, contract.LABELS.models, UNKNOWN_STRING_VALUE)
    report = evaluate(resources, "prod")
    notes = report.by_policy("vram-fit")
    assert notes and all("during preview" in v.message and v.enforcement == "advisory" for v in notes)
    assert not report.mandatory_failed


def test_unknown_instance_tokens_are_a_preview_note(resources_of):
    resources = resources_of("prod")
    find(resources, INSTANCE)[0].inputs["metadataOptions"]["httpTokens"] = UNKNOWN_STRING_VALUE
    notes = evaluate(resources, "prod").by_policy("imdsv2-required")
    assert len(notes) == 1 and "can't run policy 'imdsv2-required' during preview" in notes[0].message


def test_secret_wrapped_inputs_are_read(resources_of):
    resources = resources_of("prod")
    secret = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270"}
    for gateway in find(resources, CONTAINER, "gateway"):
        uploads = gateway.inputs["uploads"]
        uploads[0]["content"] = uploads[0]["content"].replace("return 403;", "set $x 1;")
        gateway.inputs["uploads"] = {**secret, "value": uploads}
    assert plain({"a": {**secret, "value": [1]}}) == {"a": [1]}
    assert evaluate(resources, "prod").by_policy("admin-routes-closed")


def test_report_renders_and_serializes(resources_of):
    report = evaluate(_oversized(resources_of("prod")), "prod")
    console = Console(width=200, record=True)
    console.print(report.render())
    text = console.export_text()
    assert "vram-fit" in text and "mandatory" in text and "FAIL" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["mandatoryFailed"] is True
    assert {v["policy"] for v in data["violations"]} >= {"vram-fit", "quantization-required"}
    assert all(v["urn"].startswith("urn:pulumi:prod::") for v in data["violations"])

    clean = evaluate(resources_of("prod"), "prod")
    console = Console(width=200, record=True)
    console.print(clean.render())
    assert f"policy verdict: pass ({len(rules.POLICIES)} policies)" in console.export_text()


def test_config_files_exist_for_every_stack():
    stacks = {p.name[len("Pulumi.") : -len(".yaml")] for p in Path(ROOT).glob("Pulumi.*.yaml")}
    assert stacks <= {p.name[len("config.") : -len(".json")] for p in POLICIES.glob("config.*.json")}
