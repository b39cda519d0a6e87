"""The CI scripts the workflows call (scripts/ci), run for real against fake `pulumi`, `fleet` and `gh`
executables written here: each records its arguments and answers from files, so the tests see exactly what the
scripts ask of the Pulumi CLI and of GitHub — refresh before every update, the saved plan applied only for the
commit it was made for, the smoke-tested tag set only after a passing smoke test, a failed verdict replacing a
passing pull-request comment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "scripts" / "ci"
SHA = "c0ffee" + "0" * 34
OLD_SHA = "bad" + "0" * 37

FAKE_PULUMI = r"""#!/usr/bin/env bash
# Fake pulumi: logs its arguments, keeps tags as files, answers outputs from a file.
echo "pulumi $*" >> "$FAKE/log"
case "$1 $2 $3" in
  "stack tag get") cat "$FAKE/tag-$4" 2>/dev/null || exit 1 ;;
  "stack tag set") printf '%s' "$5" > "$FAKE/tag-$4" ;;
  "stack tag rm") rm -f "$FAKE/tag-$4" ;;
  "stack output --json") cat "$FAKE/outputs.json" ;;
  *)
    if [ "$1" = preview ]; then
      echo "Previewing update (with policy violations when FAKE_FAIL is set)"
      while [ $# -gt 0 ]; do [ "$1" = --save-plan ] && echo '{"plan": true}' > "$2"; shift; done
    fi
    exit "${FAKE_FAIL:-0}" ;;
esac
"""

FAKE_FLEET = r"""#!/usr/bin/env bash
echo "fleet $* key=${FLEET_API_KEY:-}${FLEET_PROMETHEUS_PASSWORD:+ prometheus=$FLEET_PROMETHEUS_PASSWORD}" >> "$FAKE/log"
case "$1" in
  smoke) exit "${FAKE_SMOKE:-0}" ;;
  deployment-record) echo '{}' > "$4" ;;
esac
"""

FAKE_GH = r"""#!/usr/bin/env bash
echo "gh $*" >> "$FAKE/log"
if [ "$2" = --method ]; then
  body=${6#body=@}
  cp "$body" "$FAKE/posted-$3"
  exit 0
fi
filter=
while [ $# -gt 0 ]; do [ "$1" = --jq ] && filter=$2; shift; done
jq -r "$filter" "$FAKE/comments.json"
"""


@pytest.fixture
def fake(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("pulumi", FAKE_PULUMI), ("fleet", FAKE_FLEET), ("gh", FAKE_GH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "log").touch()
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE": str(tmp_path), "DEPLOY_SHA": SHA,
        "FLEET": str(bin_dir / "fleet"), "HOME": str(tmp_path),
    }
    return {"dir": tmp_path, "env": env}


def run(fake: dict, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CI / script), *args], cwd=fake["dir"], env={**fake["env"], **env},
        capture_output=True, text=True, timeout=60,
    )


def log(fake: dict) -> list[str]:
    return (fake["dir"] / "log").read_text().splitlines()


def test_ci_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is needed (scripts/apt-packages.txt)", pytrace=False)
    done = subprocess.run(["shellcheck", *sorted(str(p) for p in CI.glob("*.sh"))], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_up_refreshes_applies_the_policy_pack_and_tags_the_commit(fake):
    (fake["dir"] / "tag-fleet:smoke-tested-commit").write_text(OLD_SHA)
    done = run(fake, "pulumi-up.sh", "staging")
    assert done.returncode == 0, done.stderr
    calls = log(fake)
    up = next(c for c in calls if c.startswith("pulumi up "))
    for flag in ("--stack staging", "--yes", "--refresh", "--policy-pack policies", "--policy-pack-config policies/config.staging.json"):
        assert flag in up
    assert "--plan" not in up
    # The old smoke-test claim is dropped before the update, the new commit recorded after it.
    assert calls.index("pulumi stack tag rm fleet:smoke-tested-commit --stack staging") < calls.index(up)
    assert not (fake["dir"] / "tag-fleet:smoke-tested-commit").exists()
    assert (fake["dir"] / "tag-fleet:deployed-commit").read_text() == SHA


@pytest.mark.parametrize(
    "stack, config",
    [("prod", "prod"), ("prodeu", "prod"), ("euprod", "prod"), ("preprod", "staging"), ("stg-ap", "staging"), ("usdev", "dev")],
)
def test_a_custom_stack_name_gets_its_environments_policy_config(fake, stack, config):
    # The same fallback as fleet preview's: a stack without policies/config.<stack>.json is judged with the one of
    # the environment its name decides, never with a path the Pulumi CLI cannot read.
    done = run(fake, "policy-config.sh", stack)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"policies/config.{config}.json"
    assert run(fake, "pulumi-up.sh", stack).returncode == 0
    plan = run(fake, "pulumi-plan.sh", stack, str(fake["dir"] / "plan"))
    assert plan.returncode == 0, plan.stderr
    for command in (next(c for c in log(fake) if c.startswith(f"pulumi {verb} ")) for verb in ("up", "preview")):
        assert f"--policy-pack policies --policy-pack-config policies/config.{config}.json" in command


def test_a_stack_name_of_no_environment_runs_the_pack_at_its_own_levels(fake):
    # No policy config at all: every policy at the pack's level (mandatory), not a missing file.
    assert run(fake, "policy-config.sh", "sandbox").stdout == ""
    assert run(fake, "pulumi-up.sh", "sandbox").returncode == 0
    up = next(c for c in log(fake) if c.startswith("pulumi up "))
    assert "--policy-pack policies" in up and "--policy-pack-config" not in up


def test_a_failed_up_records_no_deployment(fake):
    done = run(fake, "pulumi-up.sh", "prod", FAKE_FAIL="255")
    assert done.returncode != 0
    assert not (fake["dir"] / "tag-fleet:deployed-commit").exists()


def test_prod_applies_only_the_plan_made_for_this_commit(fake):
    plan_dir = fake["dir"] / "prod-plan"
    done = run(fake, "pulumi-plan.sh", "prod", str(plan_dir), GITHUB_STEP_SUMMARY=str(fake["dir"] / "summary.md"))
    assert done.returncode == 0, done.stderr
    preview = next(c for c in log(fake) if c.startswith("pulumi preview "))
    for flag in ("--refresh", "--diff", f"--save-plan {plan_dir}/plan.json", "--policy-pack-config policies/config.prod.json"):
        assert flag in preview
    assert (plan_dir / "commit").read_text().strip() == SHA
    summary = (fake["dir"] / "summary.md").read_text()
    assert f"Plan for `prod` at `{SHA}`" in summary and "Previewing update" in summary

    done = run(fake, "pulumi-up.sh", "prod", PLAN=str(plan_dir / "plan.json"))
    assert done.returncode == 0, done.stderr
    up = next(c for c in log(fake) if c.startswith("pulumi up "))
    assert f"--plan {plan_dir}/plan.json" in up and "--refresh" in up

    # The same plan offered to another commit's deployment is refused before anything runs.
    (fake["dir"] / "log").write_text("")
    done = run(fake, "pulumi-up.sh", "prod", PLAN=str(plan_dir / "plan.json"), DEPLOY_SHA=OLD_SHA)
    assert done.returncode == 1 and "the saved plan is for" in done.stderr
    assert not any(c.startswith("pulumi up") for c in log(fake))


def test_a_failing_plan_fails_and_says_so(fake):
    done = run(fake, "pulumi-plan.sh", "prod", str(fake["dir"] / "p"), FAKE_FAIL="3",
               GITHUB_STEP_SUMMARY=str(fake["dir"] / "summary.md"))
    assert done.returncode == 3
    assert "FAILED (exit 3)" in (fake["dir"] / "summary.md").read_text()


def _outputs(fake: dict) -> None:
    outputs = {"gatewayUrl": "https://llm.example.com", "prometheusUrl": "http://10.0.0.1:9090",
               "apiKeys": {"search": "k-search", "ci": "k-ci"}, "prometheusPassword": "p-prom"}
    (fake["dir"] / "outputs.json").write_text(json.dumps(outputs))


def test_smoke_tags_and_records_only_after_a_pass(fake):
    _outputs(fake)
    (fake["dir"] / "tag-fleet:deployed-commit").write_text(SHA)
    done = run(fake, "smoke.sh", "staging", "record.json", "--insecure", SMOKE_METRICS="true")
    assert done.returncode == 0, done.stderr
    assert "::add-mask::k-ci" in done.stdout
    smoke = next(c for c in log(fake) if c.startswith("fleet smoke"))
    assert "::add-mask::p-prom" in done.stdout
    assert smoke == "fleet smoke https://llm.example.com --insecure --metrics-url http://10.0.0.1:9090 key=k-ci prometheus=p-prom"
    assert (fake["dir"] / "tag-fleet:smoke-tested-commit").read_text() == SHA
    assert (fake["dir"] / "record.json").is_file()


def test_a_failed_smoke_leaves_the_stack_untested(fake):
    _outputs(fake)
    (fake["dir"] / "tag-fleet:deployed-commit").write_text(SHA)
    done = run(fake, "smoke.sh", "prod", "record.json", FAKE_SMOKE="1")
    assert done.returncode == 1
    assert not (fake["dir"] / "tag-fleet:smoke-tested-commit").exists()
    assert not (fake["dir"] / "record.json").exists()


def test_smoke_refuses_a_stack_that_runs_another_commit(fake):
    _outputs(fake)
    (fake["dir"] / "tag-fleet:deployed-commit").write_text(OLD_SHA)
    done = run(fake, "smoke.sh", "prod", "record.json")
    assert done.returncode == 1 and "nothing to smoke-test" in done.stderr
    assert not any(c.startswith("fleet smoke") for c in log(fake))


def _comment_env(fake: dict) -> dict:
    return {"GITHUB_REPOSITORY": "acme/fleet", "PR_NUMBER": "7", "HEAD_SHA": SHA, "RUN_URL": "https://ci/run/1"}


def test_a_failed_preview_replaces_the_passing_comment(fake):
    comments = [
        {"id": 11, "body": "<!-- ollama-fleet preview: staging -->\nstaging passed"},
        {"id": 12, "body": "<!-- ollama-fleet preview: prod -->\n#### passed"},
        {"id": 13, "body": "a reviewer's remark"},
    ]
    (fake["dir"] / "comments.json").write_text(json.dumps(comments))
    (fake["dir"] / "preview.txt").write_text("error: mandatory policy violation: vram-fit\n")
    done = run(fake, "preview-comment.sh", "prod", "3", "preview.txt", **_comment_env(fake))
    assert done.returncode == 0, done.stderr
    assert any("--method PATCH repos/acme/fleet/issues/comments/12" in c for c in log(fake))
    body = (fake["dir"] / "posted-PATCH").read_text()
    assert body.startswith("<!-- ollama-fleet preview: prod -->")
    assert "**FAILED** (exit 3)" in body and "vram-fit" in body and SHA in body


def test_the_first_verdict_is_a_new_comment(fake):
    (fake["dir"] / "comments.json").write_text(json.dumps([{"id": 5, "body": "<!-- ollama-fleet preview: staging -->"}]))
    (fake["dir"] / "preview.txt").write_text("Resources: 3 to update\n")
    done = run(fake, "preview-comment.sh", "prod", "0", "preview.txt", **_comment_env(fake))
    assert done.returncode == 0, done.stderr
    assert any("--method POST repos/acme/fleet/issues/7/comments" in c for c in log(fake))
    assert "**passed**" in (fake["dir"] / "posted-POST").read_text()
