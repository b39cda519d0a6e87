"""The GitHub Actions workflows: checked by actionlint (with shellcheck on every `run:` block when installed) and
by the structure the delivery process relies on — OIDC for AWS, one concurrency group per stack, the
production approval gate, actions pinned by commit SHA, previews with the policy pack on every stack."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from fleet.stack_file import available_stacks

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CACHE = Path(os.environ.get("OLLAMA_FLEET_CACHE", Path.home() / ".cache" / "ollama-fleet"))
STACKS = available_stacks(ROOT)
# `uses: owner/repo@<40 hex> # vX.Y.Z`
PINNED = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<action>[\w.-]+/[\w./-]+)@(?P<ref>\S+)(?:\s+#\s*(?P<version>v\d+(?:\.\d+)*))?\s*$")


def _load(path: Path) -> dict:
    return YAML(typ="safe").load(path.read_text())  # YAML 1.2: `on` stays a string key


@pytest.fixture(scope="module")
def actionlint() -> Path:
    binary = CACHE / "bin" / "actionlint"
    if not binary.exists():
        # scripts/bootstrap.sh --full installs it; build it here when the test runs on its own.
        if shutil.which("go") is None:
            pytest.fail("actionlint is not installed and there is no Go toolchain: run scripts/install-actionlint.sh", pytrace=False)
        subprocess.run(["bash", str(ROOT / "scripts" / "install-actionlint.sh")], check=True)
    return binary


@pytest.fixture(scope="module")
def pr() -> dict:
    return _load(WORKFLOWS / "pull-request.yml")


@pytest.fixture(scope="module")
def deploy() -> dict:
    return _load(WORKFLOWS / "deploy.yml")


def _workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))


def _run_actionlint(binary: Path, files: list[Path], cwd: Path, config: Path | None = None) -> list[dict]:
    options = ["-config-file", str(config)] if config else []
    done = subprocess.run(
        [str(binary), "-format", "{{json .}}", *options, *[str(f) for f in files]],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode in (0, 1), f"actionlint could not run: {done.stderr}"
    return json.loads(done.stdout or "[]")


def _steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job.get("steps", []) if str(s.get("uses", "")).startswith(action + "@")]


def _step_index(job: dict, predicate) -> int:
    return next(i for i, s in enumerate(job["steps"]) if predicate(s))


# --- actionlint ----------------------------------------------------------------------------------------------


def test_every_workflow_passes_actionlint(actionlint):
    files = _workflow_files()
    assert {f.name for f in files} >= {"pull-request.yml", "deploy.yml"}
    errors = _run_actionlint(actionlint, files, ROOT)
    assert errors == [], "\n".join(f"{e['filepath']}:{e['line']}:{e['column']}: {e['message']} [{e['kind']}]" for e in errors)


def test_actionlint_reports_a_broken_workflow(actionlint, tmp_path):
    """The check above can fail: a dangling `needs:` and (with shellcheck) an unquoted variable are reported."""
    broken = (WORKFLOWS / "deploy.yml").read_text()
    broken = broken.replace("    needs: deploy-staging\n", "    needs: deploy-stagin\n", 1)
    broken = broken.replace('echo "$PWD/.venv/bin" >> "$GITHUB_PATH"', "echo $PWD/.venv/bin >> $GITHUB_PATH", 1)
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    target = tmp_path / ".github" / "workflows" / "deploy.yml"
    target.write_text(broken)
    errors = _run_actionlint(actionlint, [target], tmp_path, ROOT / ".github" / "actionlint.yaml")
    messages = " | ".join(e["message"] for e in errors)
    assert any("deploy-stagin" in e["message"] for e in errors), messages
    if shutil.which("shellcheck"):
        assert any(e["kind"] == "shellcheck" and "SC2086" in e["message"] for e in errors), messages


# --- pinning and hygiene ----------------------------------------------------------------------------------------


def test_actions_are_pinned_by_commit_sha_with_a_version_comment():
    seen: dict[str, set[str]] = {}
    for path in _workflow_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not re.match(r"^\s*(-\s+)?uses:", line):
                continue
            match = PINNED.match(line)
            assert match, f"{path.name}:{number}: cannot read `uses:` line {line.strip()!r}"
            where = f"{path.name}:{number} {match['action']}"
            assert re.fullmatch(r"[0-9a-f]{40}", match["ref"]), f"{where}: pinned to {match['ref']!r}, not a full commit SHA"
            assert match["version"], f"{where}: the SHA needs a `# vX.Y.Z` comment naming its release"
            seen.setdefault(match["action"], set()).add(f"{match['ref']} {match['version']}")
    assert {"actions/checkout", "pulumi/actions", "aws-actions/configure-aws-credentials"} <= set(seen)
    inconsistent = {action: refs for action, refs in seen.items() if len(refs) > 1}
    assert not inconsistent, f"one action pinned to several commits: {inconsistent}"


def test_no_expression_is_interpolated_into_a_script():
    """Values reach `run:` blocks through `env:` only: no script injection, and secrets stay out of the script text."""
    for path in _workflow_files():
        for job_id, job in _load(path)["jobs"].items():
            for step in job.get("steps", []):
                assert "${{" not in step.get("run", ""), f"{path.name} {job_id}: {step.get('name')} interpolates into its script"


def test_workflow_default_permissions_are_read_only(pr, deploy):
    for workflow in (pr, deploy):
        assert workflow["permissions"] == {"contents": "read"}


# --- pull requests ----------------------------------------------------------------------------------------------


def test_pull_requests_run_lint_tests_and_the_offline_preview_of_every_stack(pr):
    assert "pull_request" in pr["on"]
    jobs = pr["jobs"]
    lint = " ".join(s.get("run", "") for s in jobs["lint"]["steps"])
    assert "compileall" in lint and "install-actionlint.sh" in lint and "actionlint" in lint
    assert any(s.get("run", "").strip() == "make test" for s in jobs["test"]["steps"])
    offline = jobs["offline-preview"]
    assert sorted(offline["strategy"]["matrix"]["stack"]) == sorted(STACKS)
    assert any('fleet preview --stack "$STACK"' in s.get("run", "") for s in offline["steps"])


def test_pulumi_preview_runs_per_stack_with_the_policy_pack_and_comments(pr):
    job = pr["jobs"]["pulumi-preview"]
    matrix = job["strategy"]["matrix"]["stack"]
    for stack in STACKS:  # the matrix expression lists every stack (dev only with a Docker runner)
        assert f'"{stack}"' in matrix
    assert job["permissions"]["id-token"] == "write"
    assert job["permissions"]["pull-requests"] == "write"
    (pulumi,) = _steps_using(job, "pulumi/actions")
    with_ = pulumi["with"]
    assert with_["command"] == "preview"
    assert with_["stack-name"] == "${{ matrix.stack }}"
    assert with_["comment-on-pr"] is True
    assert with_["policyPacks"] == "policies"
    assert with_["policyPackConfigs"] == "policies/config.${{ matrix.stack }}.json"
    # pulumi/actions installs nothing: the program and the pack are installed before it runs.
    install = _step_index(job, lambda s: "bootstrap.sh" in s.get("run", ""))
    assert install < job["steps"].index(pulumi)
    (aws,) = _steps_using(job, "aws-actions/configure-aws-credentials")
    assert re.fullmatch(r"\$\{\{ vars\.[A-Z_]+ \}\}", aws["with"]["role-to-assume"])
    assert "aws-access-key-id" not in aws["with"]  # OIDC, no long-lived keys
    assert job["steps"].index(aws) < job["steps"].index(pulumi)


def test_policy_pack_configs_exist_for_every_stack():
    for stack in STACKS:
        path = ROOT / "policies" / f"config.{stack}.json"
        assert path.is_file(), f"the workflows pass {path.relative_to(ROOT)} to `pulumi preview/up`"
        json.loads(path.read_text())


# --- deploys ----------------------------------------------------------------------------------------------------


DEPLOY_JOBS = {"dev": "deploy-dev", "staging": "deploy-staging", "prod": "deploy-prod"}


def test_deploys_run_on_main_in_order_dev_staging_prod(deploy):
    assert deploy["on"]["push"]["branches"] == ["main"]
    jobs = deploy["jobs"]
    assert set(DEPLOY_JOBS) == set(STACKS)
    assert "verify" in jobs["deploy-dev"]["needs"]
    assert "deploy-dev" in jobs["deploy-staging"]["needs"]
    assert jobs["deploy-prod"]["needs"] in ("deploy-staging", ["deploy-staging"])
    # dev targets a local Docker host: a self-hosted runner with Docker, only when one is registered.
    assert jobs["deploy-dev"]["runs-on"] == ["self-hosted", "linux", "docker"]
    assert "vars.DEV_DOCKER_RUNNER" in jobs["deploy-dev"]["if"]
    # staging still follows when dev was skipped, never when it failed.
    assert "skipped" in jobs["deploy-staging"]["if"] and "needs.deploy-dev.result" in jobs["deploy-staging"]["if"]


def test_each_stack_has_its_own_concurrency_group_and_deploys_are_never_cancelled(deploy):
    groups = []
    for stack, job_id in DEPLOY_JOBS.items():
        concurrency = deploy["jobs"][job_id]["concurrency"]
        assert concurrency["cancel-in-progress"] is False
        assert stack in concurrency["group"]
        groups.append(concurrency["group"])
    assert len(set(groups)) == len(groups)
    assert "concurrency" not in deploy  # a workflow-level group would serialize (or cancel) across stacks


def test_prod_waits_for_the_production_environment(deploy):
    environment = deploy["jobs"]["deploy-prod"]["environment"]
    assert (environment["name"] if isinstance(environment, dict) else environment) == "production"
    for job_id in ("deploy-dev", "deploy-staging"):
        environment = deploy["jobs"][job_id]["environment"]
        assert (environment["name"] if isinstance(environment, dict) else environment) != "production"


def test_every_deploy_runs_pulumi_up_with_its_policy_config_then_the_smoke_test(deploy):
    for stack, job_id in DEPLOY_JOBS.items():
        job = deploy["jobs"][job_id]
        (up,) = _steps_using(job, "pulumi/actions")
        assert up["with"]["command"] == "up"
        assert up["with"]["stack-name"] == stack
        assert up["with"]["policyPacks"] == "policies"
        assert up["with"]["policyPackConfigs"] == f"policies/config.{stack}.json"
        smoke = _step_index(job, lambda s: "fleet smoke" in s.get("run", ""))
        assert smoke > job["steps"].index(up)
        script = job["steps"][smoke]["run"]
        # The key is masked before anything can print it, and handed over in the environment.
        assert script.index("::add-mask::") < script.index("fleet smoke")
        assert "FLEET_API_KEY" in script and "--api-key" not in script
        assert job["steps"][smoke]["env"]["GATEWAY_URL"] == f"${{{{ steps.{up['id']}.outputs.gatewayUrl }}}}"


def test_aws_deploys_use_oidc_and_only_they_get_an_id_token(deploy):
    for job_id, job in deploy["jobs"].items():
        aws = _steps_using(job, "aws-actions/configure-aws-credentials")
        has_token = job.get("permissions", {}).get("id-token") == "write"
        assert bool(aws) == has_token, f"{job_id}: id-token permission and AWS credentials go together"
        for step in aws:
            assert re.fullmatch(r"\$\{\{ vars\.[A-Z_]+ \}\}", step["with"]["role-to-assume"])
            assert not {"aws-access-key-id", "aws-secret-access-key"} & set(step["with"])
    assert _steps_using(deploy["jobs"]["deploy-staging"], "aws-actions/configure-aws-credentials")
    assert _steps_using(deploy["jobs"]["deploy-prod"], "aws-actions/configure-aws-credentials")
