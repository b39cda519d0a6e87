"""`fleet promote FROM TO` on temporary git checkouts holding copies of the real stack files: what moves per stack
pair, what stays, what the source really ran (its deployment record: tags, history, `deployed` output) pinned
into the target, and the refusals — an untested source, uncommitted edits, a target that would not fit."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from fleet.ops import promote
from fleet.capacity import estimate_node
from fleet.cli.delivery import register
from fleet.config import FLEET_KEY
from fleet.ops.deployment import TAG_DEPLOYED, TAG_SMOKE_TESTED
from fleet.stack_file import load_stack_file

ROOT = Path(__file__).resolve().parents[2]
NEW_OLLAMA = "ollama/ollama:0.13.2@sha256:" + "b" * 64
MODEL_DIGEST = "sha256:" + "a" * 64
PINNED_DIGEST = "sha256:46e0c10c039e019119339687c3c1757cc81b9da49709a3b3924863ba87ca666e"  # in the stack files
PULLED_DIGEST = "sha256:" + "d" * 64
AMI = "ami-0123abcd4567ef890"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder holding copies of Pulumi.yaml and the three real stack files."""
    for path in [ROOT / "Pulumi.yaml", *ROOT.glob("Pulumi.*.yaml")]:
        shutil.copy(path, tmp_path / path.name)
    git(tmp_path, "init", "-q", "-b", "main")
    commit_all(tmp_path, "stacks")
    return tmp_path


def git(project: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin", "HOME": str(project)}
    done = subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def commit_all(project: Path, message: str = "change") -> str:
    git(project, "add", "-A")
    git(project, "commit", "-q", "--allow-empty", "-m", message)
    return git(project, "rev-parse", "HEAD")


def write_record(project: Path, stack: str = "staging", commit: str | None = None, smoke: str | None = None,
                 deployed: dict | None = None) -> Path:
    """The deployment record the deploy workflow saves: deployed and smoke-tested at `commit` (HEAD)."""
    commit = commit or git(project, "rev-parse", "HEAD")
    record = {
        "stack": stack,
        "outputs": {"deployed": deployed if deployed is not None else {"images": {}, "models": {}, "amiId": None},
                    "apiKeys": "[secret]"},
        "tags": {TAG_DEPLOYED: commit, TAG_SMOKE_TESTED: smoke or commit},
        "history": [{"kind": "update", "result": "succeeded", "environment": {"git.head": commit}}],
    }
    path = project.parent / f"{project.name}-record-{stack}.json"
    path.write_text(json.dumps(record))
    return path


def edit(path: Path, *replacements: tuple[str, str]) -> None:
    text = path.read_text()
    for old, new in replacements:
        assert old in text, f"{old!r} not in {path.name}"
        text = text.replace(old, new, 1)
    path.write_text(text)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, sub in value.items():
            items.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return items
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        items = {}
        for index, sub in enumerate(value):
            name = sub.get("name", index) if isinstance(sub, dict) else index
            items.update(flatten(sub, f"{prefix}[{name}]"))
        return items
    return {prefix: value}


def changed_keys(before: str, after: str) -> set[str]:
    old, new = flatten(yaml.safe_load(before)), flatten(yaml.safe_load(after))
    return {k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>")}


def tested_staging(project: Path) -> None:
    """Staging after a round of testing: a new Ollama image, a pinned model digest, other knobs and limits —
    plus staging-only changes (node count, domain, retention, clients, tags, enforcement) that must not move."""
    edit(
        project / "Pulumi.staging.yaml",
        (f"            digest: {PINNED_DIGEST}\n", f"            digest: {MODEL_DIGEST}\n"),
        ("          numParallel: 4\n", "          numParallel: 3\n"),
        ("          maxQueue: 128\n", "          maxQueue: 96\n"),
        ("    gateway:\n", f"    images:\n      ollama: {NEW_OLLAMA}\n    gateway:\n      rateLimits:\n        perKeyPerMinute: 900\n      readTimeoutS: 300\n"),
        ("      queuePerNode: 8\n", "      queuePerNode: 6\n"),
        ("        count: 1\n", "        count: 3\n"),
        ("llm-staging.example.com", "llm-stg.example.com"),
        ("      retention: 7d\n", "      retention: 3d\n"),
        ("        - name: platform\n", "        - name: platform\n        - name: qa\n"),
        ("      cost-center: ml-platform\n", "      cost-center: staging-tests\n"),
    )


PROMOTED_BY_TESTED_STAGING = {
    f"config.{FLEET_KEY}.images.ollama",
    f"config.{FLEET_KEY}.nodeGroups[chat].models[llama3.1].digest",
    f"config.{FLEET_KEY}.nodeGroups[chat].ollama.numParallel",
    f"config.{FLEET_KEY}.nodeGroups[chat].ollama.maxQueue",
    f"config.{FLEET_KEY}.gateway.readTimeoutS",
}


def run_cli(project: Path, monkeypatch, *args: str, record: Path | None = None):
    """`fleet promote` as after a green pipeline: everything committed, the source tested at HEAD."""
    if record is None:
        commit_all(project)
        record = write_record(project, args[0])
    app = typer.Typer()
    register(app)
    monkeypatch.chdir(project)
    return CliRunner().invoke(app, ["promote", *args, "--record", str(record)])


# --- what moves, what stays ----------------------------------------------------------------------------------


def test_nothing_to_promote_between_stacks_that_share_the_tested_values(project):
    # staging and prod differ in placement, counts, domain, TLS, clients, retention, HA — none of that moves.
    plan = promote.plan_promotion("staging", "prod", project)
    assert not plan.changed and plan.changes == [] and plan.diff == ""


def test_the_diff_shows_exactly_the_promoted_keys(project):
    tested_staging(project)
    plan = promote.plan_promotion("staging", "prod", project)
    assert changed_keys(plan.original, plan.candidate) == PROMOTED_BY_TESTED_STAGING
    assert {c.path for c in plan.changes} == {
        f"{FLEET_KEY}.images.ollama",
        f"{FLEET_KEY}.nodeGroups[chat].models[0].digest",
        f"{FLEET_KEY}.nodeGroups[chat].ollama.numParallel",
        f"{FLEET_KEY}.nodeGroups[chat].ollama.maxQueue",
        f"{FLEET_KEY}.gateway.readTimeoutS",
    }
    changed_lines = [l[1:].strip() for l in plan.diff.splitlines() if l[:1] in "+-" and not l.startswith(("+++", "---"))]
    assert sorted(changed_lines) == sorted(
        [
            f"digest: {MODEL_DIGEST}", f"digest: {PINNED_DIGEST}",
            "numParallel: 4", "numParallel: 3",
            "maxQueue: 128", "maxQueue: 96",
            "images:", f"ollama: {NEW_OLLAMA}", "readTimeoutS: 300",
        ]
    )
    numparallel = next(c for c in plan.changes if c.path.endswith("numParallel"))
    assert (numparallel.before, numparallel.after) == (4, 3)


def test_target_specific_values_and_layout_are_kept(project):
    tested_staging(project)
    plan = promote.plan_promotion("staging", "prod", project)
    settings = load_stack_file(_write(project, "candidate", plan.candidate), "prod").settings
    assert settings.environment == "prod" and settings.target == "aws"
    assert settings.node_groups[0].count == 2 and settings.node_groups[0].instance_type == "g6e.xlarge"
    assert settings.aws.vpc_cidr == "10.70.0.0/16"
    assert settings.gateway.domain == "llm.example.com" and settings.gateway.tls.mode == "acme"
    assert [c.name for c in settings.gateway.clients] == ["search", "support-bot", "ci"]
    assert settings.gateway.high_availability is True
    assert settings.monitoring.retention == "30d"
    assert settings.policy.enforcement == "mandatory"
    assert settings.tags == {"cost-center": "ml-platform"}
    # ... while the promoted values arrived
    assert settings.images.ollama == NEW_OLLAMA
    assert settings.node_groups[0].models[0].digest == MODEL_DIGEST
    assert settings.node_groups[0].ollama.num_parallel == 3
    # ... and nothing sized for staging's hardware or traffic did
    assert settings.gateway.queue_per_node == 8
    assert settings.gateway.rate_limits.per_key_per_minute != 900
    # Round-trip editing: the header comment, quoting and flow lists of the target stay as written.
    assert plan.candidate.startswith("# prod: AWS, GPU nodes in two zones")
    assert '          keepAlive: "-1"\n' in plan.candidate
    assert "      zones: [us-east-1a, us-east-1b]\n" in plan.candidate


def test_comments_on_changed_and_neighbouring_keys_survive(project):
    edit(project / "Pulumi.prod.yaml",
         ("          numParallel: 4\n", "          numParallel: 4  # sized with fleet tune\n"),
         ("        modelVolumeGb: 200\n", "        # the model volume outlives the host\n        modelVolumeGb: 200\n"))
    edit(project / "Pulumi.staging.yaml", ("          numParallel: 4\n", "          numParallel: 2\n"))
    plan = promote.plan_promotion("staging", "prod", project)
    assert "          numParallel: 2  # sized with fleet tune\n" in plan.candidate
    assert "        # the model volume outlives the host\n        modelVolumeGb: 200\n" in plan.candidate
    assert changed_keys(plan.original, plan.candidate) == {f"config.{FLEET_KEY}.nodeGroups[chat].ollama.numParallel"}


def test_a_value_left_to_its_default_in_the_source_is_removed_from_the_target(project):
    edit(project / "Pulumi.prod.yaml", ("      queuePerNode: 8\n", "      queuePerNode: 8\n      readTimeoutS: 900\n"))
    plan = promote.plan_promotion("staging", "prod", project)
    assert "readTimeoutS" not in plan.candidate
    (change,) = plan.changes
    assert change.path == f"{FLEET_KEY}.gateway.readTimeoutS" and change.before == 900
    assert change.show(change.after) == "(unset: default)"


def test_groups_are_matched_by_name(project):
    plan = promote.plan_promotion("dev", "staging", project)
    candidate = yaml.safe_load(plan.candidate)["config"][FLEET_KEY]
    original = yaml.safe_load(plan.original)["config"][FLEET_KEY]
    # dev's CPU group has no counterpart in staging: staging's GPU group keeps its own models and knobs.
    assert candidate["nodeGroups"] == original["nodeGroups"]
    assert any("'cpu'" in note and "not promoted" in note for note in plan.notes)
    # dev's rate limits and queue are sized for a laptop: staging keeps its own
    assert candidate["gateway"] == original["gateway"]


def test_an_invalid_source_or_a_missing_stack_is_refused(project):
    edit(project / "Pulumi.staging.yaml", ("          numParallel: 4\n", "          numParallel: 0\n"))
    with pytest.raises(promote.PromotionError, match=r"source stack is not valid(.|\n)*numParallel"):
        promote.plan_promotion("staging", "prod", project)
    with pytest.raises(promote.PromotionError, match="no stack file Pulumi.qa.yaml"):
        promote.plan_promotion("dev", "qa", project)
    with pytest.raises(promote.PromotionError, match="same stack"):
        promote.plan_promotion("prod", "prod", project)


# --- the command: diff first, checks, refusals -----------------------------------------------------------------


def test_refused_when_the_promoted_models_do_not_fit_the_target_gpus(project, monkeypatch):
    """staging runs on 48 GiB L40S; a 24 GiB A10G target cannot hold the context staging was tested with
    (65536 × 4 tokens: an 18 GB q8_0 KV cache next to 4.6 GB of weights)."""
    edit(project / "Pulumi.staging.yaml", ("            numCtx: 8192\n", "            numCtx: 65536\n"))
    edit(project / "Pulumi.prod.yaml", ("        instanceType: g6e.xlarge\n", "        instanceType: g5.xlarge\n"))
    staging = load_stack_file(project / "Pulumi.staging.yaml")
    assert estimate_node(staging.settings.node_groups[0], 0.10).fits  # it fits where it was tested
    before = (project / "Pulumi.prod.yaml").read_bytes()

    result = run_cli(project, monkeypatch, "staging", "prod", "--yes")

    assert result.exit_code == 3, result.output
    assert "+            numCtx: 65536" in result.output
    assert result.output.index("+            numCtx: 65536") < result.output.index("refused")  # the diff comes first
    assert "does not fit g5.xlarge" in result.output
    assert (project / "Pulumi.prod.yaml").read_bytes() == before


def test_a_cpu_group_is_judged_against_the_ram_its_stack_declares(project):
    """As `fleet plan` and vram-fit judge it: a `local-cpu` group against `local.memoryGib`, no verdict without it."""
    path = project / "Pulumi.dev.yaml"
    edit(path, ("            tag: 135m\n            quantization: q4_1\n", "            tag: 8b\n            quantization: fp16\n"))
    edit(path, ("          - name: smollm2\n", "          - name: llama3.1\n"))
    config = load_stack_file(path)
    (problem,) = promote._capacity_problems(config, project)
    assert problem.startswith("node group 'cpu' does not fit local-cpu (8.0 GiB of RAM declared in local.memoryGib, 10% headroom)")
    edit(path, ("      memoryGib: 8 ", "      memoryGib: 64 "))
    assert promote._capacity_problems(load_stack_file(path), project) == []
    edit(path, ("      memoryGib: 64 ", "      # memoryGib: 64 "))
    assert promote._capacity_problems(load_stack_file(path), project) == []


def test_refused_when_a_mandatory_policy_fails_on_the_target(project, monkeypatch):
    """An image without a digest passes staging's policies but not prod's pinned-images (digest required in prod)."""
    edit(project / "Pulumi.staging.yaml", ("    gateway:\n", "    images:\n      ollama: ollama/ollama:0.13.1\n    gateway:\n"))
    before = (project / "Pulumi.prod.yaml").read_bytes()

    result = run_cli(project, monkeypatch, "staging", "prod", "--yes")

    assert result.exit_code == 3, result.output
    assert "pinned-images" in result.output
    assert "a mandatory policy fails on the promoted prod stack" in result.output
    assert (project / "Pulumi.prod.yaml").read_bytes() == before


def test_dry_run_shows_the_diff_and_the_verdict_and_writes_nothing(project, monkeypatch):
    tested_staging(project)
    before = (project / "Pulumi.prod.yaml").read_bytes()
    result = run_cli(project, monkeypatch, "staging", "prod", "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"+      ollama: {NEW_OLLAMA}" in result.output
    assert "the promoted prod stack passes validation, capacity and its policies" in result.output
    assert "dry run: Pulumi.prod.yaml is unchanged" in result.output
    assert (project / "Pulumi.prod.yaml").read_bytes() == before


def test_without_yes_and_without_a_terminal_nothing_is_written(project, monkeypatch):
    tested_staging(project)
    before = (project / "Pulumi.prod.yaml").read_bytes()
    result = run_cli(project, monkeypatch, "staging", "prod")
    assert result.exit_code == 1, result.output
    assert "pass --yes" in result.output
    assert (project / "Pulumi.prod.yaml").read_bytes() == before


def test_promotion_with_yes_writes_the_checked_candidate(project, monkeypatch):
    tested_staging(project)
    plan = promote.plan_promotion("staging", "prod", project)
    result = run_cli(project, monkeypatch, "staging", "prod", "--yes")
    assert result.exit_code == 0, result.output
    assert (project / "Pulumi.prod.yaml").read_text() == plan.candidate
    # promoting again finds nothing left to do
    again = run_cli(project, monkeypatch, "staging", "prod", "--yes")
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_secrets_of_the_target_are_untouched(project):
    secure = "v1:c2VjcmV0LWNpcGhlcnRleHQ=:AAAAAAAAAAAAAAAAAAAAAAAA"
    edit(project / "Pulumi.prod.yaml", ("  aws:region: us-east-1\n", f"  aws:region: us-east-1\n  ollama-fleet:adminApiKey:\n    secure: {secure}\n"))
    tested_staging(project)
    plan = promote.plan_promotion("staging", "prod", project)
    assert f"  ollama-fleet:adminApiKey:\n    secure: {secure}\n" in plan.candidate
    assert changed_keys(plan.original, plan.candidate) == PROMOTED_BY_TESTED_STAGING


def _write(folder: Path, stack: str, text: str) -> Path:
    path = folder / f"Pulumi.{stack}.yaml"
    path.write_text(text)
    return path


def test_the_runbook_lists_every_promoted_key():
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for path in promote.PROMOTED:
        assert f"`{'.'.join(path)}`" in runbook, f"docs/runbook.md does not list the promoted key {'.'.join(path)}"


# --- what was deployed and tested ---------------------------------------------------------------------------------


def test_only_the_pairs_of_the_pipeline_promote(project):
    for source, target in (("staging", "dev"), ("dev", "prod"), ("prod", "staging")):
        with pytest.raises(promote.PromotionError, match="promotions go dev → staging, staging → prod"):
            promote.plan_promotion(source, target, project)
    assert ("gateway", "queuePerNode") not in promote.PROMOTED and ("gateway", "rateLimits") not in promote.PROMOTED


def test_the_deployed_digests_and_ami_are_pinned_into_the_target(project, monkeypatch):
    deployed = {"images": {"ollama": NEW_OLLAMA}, "models": {"chat": {"llama3.1:8b": PULLED_DIGEST}}, "amiId": AMI}
    commit_all(project)
    result = run_cli(project, monkeypatch, "staging", "prod", "--yes", record=write_record(project, deployed=deployed))
    assert result.exit_code == 0, result.output
    settings = load_stack_file(project / "Pulumi.prod.yaml", "prod").settings
    assert settings.images.ollama == NEW_OLLAMA
    assert settings.node_groups[0].models[0].digest == PULLED_DIGEST
    assert settings.aws.ami_id == AMI
    plan = promote.plan_promotion("staging", "prod", project, deployed={**deployed, "amiId": "ami-0fedcba9876543210"})
    assert [c.path for c in plan.changes] == [f"{FLEET_KEY}.aws.amiId"]  # the rest is already there
    assert (plan.changes[0].before, plan.changes[0].after) == (AMI, "ami-0fedcba9876543210")


def test_an_untested_source_is_refused(project, monkeypatch):
    tested_staging(project)
    head = commit_all(project)
    before = (project / "Pulumi.prod.yaml").read_bytes()
    for record, says in (
        (write_record(project, smoke="f" * 40), "its smoke test passed at"),
        (write_record(project, "prod"), "not a deployment record of stack 'staging'"),
    ):
        result = run_cli(project, monkeypatch, "staging", "prod", "--yes", record=record)
        assert result.exit_code == 1, result.output
        assert "refused:" in result.output and says in result.output, result.output
    assert (project / "Pulumi.prod.yaml").read_bytes() == before
    assert head


def test_uncommitted_edits_are_refused(project, monkeypatch):
    record = write_record(project)
    edit(project / "Pulumi.staging.yaml", ("          numParallel: 4\n", "          numParallel: 3\n"))
    result = run_cli(project, monkeypatch, "staging", "prod", "--yes", record=record)
    assert result.exit_code == 1 and "uncommitted changes to Pulumi.staging.yaml" in result.output, result.output
    assert "numParallel: 3" not in (project / "Pulumi.prod.yaml").read_text()


def test_the_tested_version_is_promoted_not_a_later_edit(project, monkeypatch):
    tested_staging(project)  # numParallel 3, deployed and smoke-tested …
    tested = commit_all(project, "tested on staging")
    edit(project / "Pulumi.staging.yaml", ("          numParallel: 3\n", "          numParallel: 2\n"))
    commit_all(project, "not deployed yet")  # … then changed again, not deployed
    result = run_cli(project, monkeypatch, "staging", "prod", "--yes", record=write_record(project, commit=tested))
    assert result.exit_code == 0, result.output
    assert load_stack_file(project / "Pulumi.prod.yaml", "prod").settings.node_groups[0].ollama.num_parallel == 3
    assert "has changed since staging was tested" in result.output


def test_the_capacity_check_judges_as_fleet_plan_does(project):
    # The same verdict and headroom as `fleet plan`: the stack's Ollama release, and vram-fit's minHeadroom of
    # the stack's policy config (prod: 10%) over a stack file that asks for none.
    from fleet.cli.capacity import plan_headroom
    from fleet.policy_config import load_config_file

    path = project / "Pulumi.prod.yaml"
    edit(path, ("numCtx: 8192", "numCtx: 131072"), ("vramHeadroom: 0.10", "vramHeadroom: 0"))
    config = load_stack_file(path)
    floor = load_config_file("prod")["vram-fit"]["minHeadroom"]
    assert config.settings.policy.vram_headroom == 0 and plan_headroom(config) == floor > 0
    group = config.settings.node_groups[0]
    assert estimate_node(group, 0.0, project).fits and not estimate_node(group, floor, project).fits
    (problem,) = promote._capacity_problems(config, project)
    assert f"{floor:.0%} headroom" in problem and repr(group.name) in problem
