"""The GitHub Actions workflows: checked by actionlint (with shellcheck on every `run:` block when installed), by
a model of GitHub's `needs`/`if`/skip rules over the parsed files (tests/unit/gha_model.py) proving that every
path either reaches prod or stops visibly, and by the structure the delivery process relies on — OIDC for
Pulumi and AWS, one concurrency group per stack, the reviewed plan before the production gate, actions pinned
by commit SHA, previews with the policy pack on every stack. The CI scripts (scripts/ci) run here against
fake `pulumi`, `gh` and `fleet` executables that record what they were asked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import copy
import itertools

import pytest
from ruamel.yaml import YAML

from fleet.stack_file import available_stacks
from tests.unit.gha_model import Scenario, simulate

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


@pytest.fixture(scope="module")
def rollback() -> dict:
    return _load(WORKFLOWS / "rollback.yml")


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
    assert {f.name for f in files} >= {"pull-request.yml", "deploy.yml", "rollback.yml"}
    errors = _run_actionlint(actionlint, files, ROOT)
    assert errors == [], "\n".join(f"{e['filepath']}:{e['line']}:{e['column']}: {e['message']} [{e['kind']}]" for e in errors)


def test_actionlint_reports_a_broken_workflow(actionlint, tmp_path):
    """The check above can fail: a dangling `needs:` and (with shellcheck) an unquoted variable are reported."""
    broken = (WORKFLOWS / "deploy.yml").read_text()
    broken = broken.replace("    needs: plan-prod\n", "    needs: plan-prd\n", 1)
    broken = broken.replace('echo "$PWD/.venv/bin" >> "$GITHUB_PATH"', "echo $PWD/.venv/bin >> $GITHUB_PATH", 1)
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    target = tmp_path / ".github" / "workflows" / "deploy.yml"
    target.write_text(broken)
    errors = _run_actionlint(actionlint, [target], tmp_path, ROOT / ".github" / "actionlint.yaml")
    messages = " | ".join(e["message"] for e in errors)
    assert any("plan-prd" in e["message"] for e in errors), messages
    if shutil.which("shellcheck"):
        assert any(e["kind"] == "shellcheck" and "SC2086" in e["message"] for e in errors), messages


# --- pinning and hygiene ----------------------------------------------------------------------------------------


def test_actions_are_pinned_by_commit_sha_with_a_version_comment():
    seen: dict[str, set[str]] = {}
    for path in _workflow_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not re.match(r"^\s*(-\s+)?uses:", line) or re.match(r"^\s*uses:\s*\./", line):
                continue  # a local reusable workflow (rollback.yml → deploy.yml) is this repository's own file
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


def test_workflow_default_permissions_are_read_only(pr, deploy, rollback):
    for workflow in (pr, deploy, rollback):
        assert workflow["permissions"] == {"contents": "read"}


def test_no_stored_pulumi_credentials_anywhere():
    """Pulumi tokens come from GitHub OIDC per job; no repository-wide token or passphrase reaches any job."""
    for path in _workflow_files():
        text = path.read_text()
        for name in ("PULUMI_ACCESS_TOKEN", "PULUMI_CONFIG_PASSPHRASE", "secrets."):
            assert name not in text, f"{path.name} uses {name}"


def test_sessions_fit_the_default_one_hour_role_limit():
    for path in _workflow_files():
        for job_id, job in _load(path)["jobs"].items():
            for step in job.get("steps", []):
                with_ = step.get("with", {})
                if "role-duration-seconds" in with_:
                    assert int(with_["role-duration-seconds"]) <= 3600, f"{path.name} {job_id}"
                if "token-expiration" in with_:
                    assert int(with_["token-expiration"]) <= 3600, f"{path.name} {job_id}"


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


def test_pulumi_preview_runs_per_stack_with_refresh_diff_and_the_policy_pack(pr):
    job = pr["jobs"]["pulumi-preview"]
    matrix = job["strategy"]["matrix"]["stack"]
    for stack in STACKS:  # the matrix expression lists every stack (dev only with a Docker runner)
        assert f'"{stack}"' in matrix
    assert job["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}
    preview = next(s for s in job["steps"] if s.get("id") == "preview")
    command = " ".join(preview["run"].replace("\\\n", " ").split())
    assert 'pulumi preview --stack "$STACK"' in command
    # The policy config is the stack's own or its environment's, picked as fleet preview picks it.
    assert 'config=$(bash scripts/ci/policy-config.sh "$STACK")' in command
    for flag in ("--refresh", "--diff", "--policy-pack policies", '${config:+--policy-pack-config "$config"}'):
        assert flag in command
    assert "--save-plan" not in command and "pulumi up" not in command
    # The program and the pack are installed, and the preview team's token fetched, before it runs.
    order = [
        _step_index(job, lambda s: "bootstrap.sh" in s.get("run", "")),
        job["steps"].index(_steps_using(job, "pulumi/auth-actions")[0]),
        job["steps"].index(_steps_using(job, "aws-actions/configure-aws-credentials")[0]),
        job["steps"].index(preview),
    ]
    assert order == sorted(order)
    (auth,) = _steps_using(job, "pulumi/auth-actions")
    assert auth["with"]["scope"] == "team:${{ vars.PULUMI_PREVIEW_TEAM }}"
    (aws,) = _steps_using(job, "aws-actions/configure-aws-credentials")
    assert aws["with"]["role-to-assume"] == "${{ vars.AWS_PREVIEW_ROLE_ARN }}"


def test_policy_pack_configs_exist_for_every_stack():
    for stack in STACKS:
        path = ROOT / "policies" / f"config.{stack}.json"
        assert path.is_file(), f"the workflows pass {path.relative_to(ROOT)} to `pulumi preview/up`"
        json.loads(path.read_text())


# --- the model of GitHub's needs/if/skip rules -------------------------------------------------------------------


def _step_named(workflow: dict, job_id: str, needle: str) -> int:
    return _step_index(workflow["jobs"][job_id], lambda s: needle in (s.get("name", "") + s.get("run", "")))


def _pr_values(fork: bool, runner: str = "") -> dict:
    return {
        "github.event.pull_request.head.repo.full_name": "someone/fork" if fork else "acme/ollama-fleet",
        "github.repository": "acme/ollama-fleet",
        "vars.DEV_DOCKER_RUNNER": runner,
        "matrix.stack": "prod",
    }


def _deploy_values(runner: str, ref: str = "refs/heads/main") -> dict:
    return {"vars.DEV_DOCKER_RUNNER": runner, "github.ref": ref}


def _run_for_real(tmp_path_factory) -> dict:
    """The final job's script runs in bash with the `needs` results GitHub would give it."""
    folder = tmp_path_factory.mktemp("verdict")
    if shutil.which("jq") is None:
        pytest.fail("jq is needed (scripts/apt-packages.txt)", pytrace=False)

    seen: dict[str, bool] = {}

    def run(step: dict, needs: dict[str, str]) -> bool:
        assert set(step.get("env", {})) <= {"NEEDS"}
        key = json.dumps([step["run"], needs], sort_keys=True)
        if key in seen:
            return seen[key]
        env = {
            "PATH": os.environ["PATH"], "DEPLOY_SHA": "0" * 40, "GITHUB_STEP_SUMMARY": str(folder / "summary.md"),
            "NEEDS": json.dumps({job: {"result": result, "outputs": {}} for job, result in needs.items()}),
        }
        done = subprocess.run(["bash", "-e", "-c", step["run"]], env=env, capture_output=True, text=True, timeout=30)
        seen[key] = done.returncode == 0
        return seen[key]

    return {"prod-deployed": run}


@pytest.fixture(scope="module")
def verdict_runner(tmp_path_factory) -> dict:
    return _run_for_real(tmp_path_factory)


def _deploy_scenarios(deploy: dict):
    """No failure; every single step failing; every job failing as a whole (a rejected or expired approval, a
    runner that never came); a cancelled run — each with and without a dev Docker runner."""
    jobs = deploy["jobs"]
    failures: list[tuple[frozenset, frozenset]] = [(frozenset(), frozenset())]
    for job_id, job in jobs.items():
        failures.append((frozenset(), frozenset({job_id})))
        for index, _ in enumerate(job.get("steps", [])):
            failures.append((frozenset({(job_id, index)}), frozenset()))
    for runner, (steps, whole_jobs), cancelled in itertools.product(("true", ""), failures, (False, True)):
        yield Scenario(_deploy_values(runner), steps, whole_jobs, cancelled)


def test_no_path_leaves_a_green_run_with_prod_not_deployed(deploy, verdict_runner):
    checked = 0
    for scenario in _deploy_scenarios(deploy):
        run = simulate(deploy, scenario, verdict_runner)
        if scenario.cancelled:
            continue  # GitHub shows a cancelled run as cancelled, never green
        checked += 1
        if run.conclusion == "success":
            assert run.results["deploy-prod"] == "success", (scenario, run.results)
        if run.results["deploy-prod"] != "success":
            assert run.conclusion == "failure", (scenario, run.results)
            assert run.results["prod-deployed"] == "failure", (scenario, run.results)
    assert checked > 50


def test_prod_is_reached_with_or_without_a_dev_runner(deploy, verdict_runner):
    for runner, dev in (("true", "success"), ("", "skipped")):
        run = simulate(deploy, Scenario(_deploy_values(runner)), verdict_runner)
        assert run.results == {
            "verify": "success", "deploy-dev": dev, "deploy-staging": "success", "plan-prod": "success",
            "deploy-prod": "success", "prod-deployed": "success",
        }
        assert run.conclusion == "success"


@pytest.mark.parametrize("stage, needle", [("deploy-dev", "fleet smoke"), ("deploy-staging", "fleet smoke"), ("deploy-staging", "pulumi up")])
def test_a_failed_stage_stops_the_chain_visibly(deploy, stage, needle):
    scenario = Scenario(_deploy_values("true"), frozenset({(stage, _step_named(deploy, stage, needle))}))
    run = simulate(deploy, scenario)
    assert run.results[stage] == "failure"
    assert run.results["plan-prod"] == run.results["deploy-prod"] == "skipped"
    assert run.conclusion == "failure"


def test_a_failed_smoke_test_never_tags_or_records_the_stack(deploy):
    for stage in ("deploy-dev", "deploy-staging", "deploy-prod"):
        job = deploy["jobs"][stage]
        smoke = _step_named(deploy, stage, "smoke.sh")
        assert "scripts/ci/smoke.sh" in job["steps"][smoke]["run"]
        record = job["steps"].index(_steps_using(job, "actions/upload-artifact")[0])
        run = simulate(deploy, Scenario(_deploy_values("true"), frozenset({(stage, smoke)})))
        assert record not in run.steps_run[stage]
        assert run.results[stage] == "failure"


def test_a_rejected_approval_fails_the_run(deploy, verdict_runner):
    run = simulate(deploy, Scenario(_deploy_values(""), failing_jobs=frozenset({"deploy-prod"})), verdict_runner)
    assert run.results["plan-prod"] == "success"
    assert run.results["prod-deployed"] == "failure" and run.conclusion == "failure"


def test_a_branch_never_deploys(deploy):
    """workflow_dispatch on another branch: the first step of `verify` fails, so nothing deploys and it shows."""
    guard = _step_named(deploy, "verify", "Deploy only from main")
    assert 'refs/heads/main' in deploy["jobs"]["verify"]["steps"][guard]["run"]
    run = simulate(deploy, Scenario(_deploy_values("true", "refs/heads/feature"), frozenset({("verify", guard)})))
    assert {run.results[j] for j in ("deploy-dev", "deploy-staging", "plan-prod", "deploy-prod")} == {"skipped"}
    assert run.conclusion == "failure"


def test_the_model_catches_the_silently_skipped_prod(deploy):
    """The model is not a rubber stamp: without the explicit conditions and the final check, a missing dev runner
    skips prod while the run stays green."""
    weakened = copy.deepcopy(deploy)
    del weakened["jobs"]["prod-deployed"]
    for job_id in ("plan-prod", "deploy-prod"):
        del weakened["jobs"][job_id]["if"]
    run = simulate(weakened, Scenario(_deploy_values("")))
    assert run.results["deploy-staging"] == "success" and run.results["deploy-prod"] == "skipped"
    assert run.conclusion == "success"


def test_a_failed_preview_is_commented_and_fails_the_check(pr):
    job = pr["jobs"]["pulumi-preview"]
    preview = _step_named(pr, "pulumi-preview", "pulumi preview --stack")
    comment = _step_named(pr, "pulumi-preview", "preview-comment.sh")
    assert preview < comment
    run = simulate(pr, Scenario(_pr_values(fork=False), frozenset({("pulumi-preview", preview)})))
    assert comment in run.steps_run["pulumi-preview"]
    assert run.conclusion == "failure"
    # The preview step records its exit code instead of failing: the last step turns it into the check.
    assert "set +e" in job["steps"][preview]["run"] and 'echo "code=$code"' in job["steps"][preview]["run"]
    verdict = job["steps"][-1]
    assert verdict["env"]["CODE"] == "${{ steps.preview.outputs.code }}" and "exit 1" in verdict["run"]


def test_fork_pull_requests_need_a_maintainers_preview(pr):
    run = simulate(pr, Scenario(_pr_values(fork=True)))
    assert run.results["pulumi-preview"] == "skipped"
    assert run.results["fork-preview"] == "success"  # the model runs it; its only step exits 1:
    assert "exit 1" in pr["jobs"]["fork-preview"]["steps"][-1]["run"]
    failing = Scenario(_pr_values(fork=True), frozenset({("fork-preview", len(pr["jobs"]["fork-preview"]["steps"]) - 1)}))
    assert simulate(pr, failing).conclusion == "failure"
    same_repo = simulate(pr, Scenario(_pr_values(fork=False)))
    assert same_repo.results["pulumi-preview"] == "success" and same_repo.results["fork-preview"] == "skipped"
    assert "permissions" not in pr["jobs"]["fork-preview"]  # no token of any kind for a fork's code


# --- deploys ----------------------------------------------------------------------------------------------------


DEPLOY_JOBS = {"dev": "deploy-dev", "staging": "deploy-staging", "prod": "deploy-prod"}


def test_deploys_run_from_main_in_order_dev_staging_plan_prod(deploy):
    assert deploy["on"]["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in deploy["on"]
    assert deploy["on"]["workflow_call"]["inputs"]["sha"]["required"] is True
    assert deploy["env"]["DEPLOY_SHA"] == "${{ inputs.sha || github.sha }}"
    jobs = deploy["jobs"]
    assert set(DEPLOY_JOBS) == set(STACKS)
    assert jobs["deploy-dev"]["needs"] == "verify"
    assert jobs["deploy-staging"]["needs"] == ["verify", "deploy-dev"]
    assert jobs["plan-prod"]["needs"] == "deploy-staging"
    assert jobs["deploy-prod"]["needs"] == "plan-prod"
    # dev targets a local Docker host: a self-hosted runner with Docker, only when one is registered.
    assert jobs["deploy-dev"]["runs-on"] == ["self-hosted", "linux", "docker"]
    for job_id in ("deploy-dev", "deploy-staging", "plan-prod", "deploy-prod"):
        assert "!cancelled()" in jobs[job_id]["if"] and ".result == 'success'" in jobs[job_id]["if"]
    assert jobs["prod-deployed"]["if"] == "always()"
    assert set(jobs["prod-deployed"]["needs"]) == set(jobs) - {"prod-deployed"}


def test_each_stack_has_its_own_concurrency_group_and_deploys_are_never_cancelled(deploy):
    groups = []
    for stack, job_id in DEPLOY_JOBS.items():
        concurrency = deploy["jobs"][job_id]["concurrency"]
        assert concurrency["cancel-in-progress"] is False
        assert stack in concurrency["group"]
        groups.append(concurrency["group"])
    assert len(set(groups)) == len(groups)
    assert deploy["jobs"]["plan-prod"]["concurrency"] == deploy["jobs"]["deploy-prod"]["concurrency"]
    assert "concurrency" not in deploy  # a workflow-level group would serialize (or cancel) across stacks


def test_prod_applies_the_reviewed_plan_after_approval(deploy):
    jobs = deploy["jobs"]
    assert jobs["deploy-prod"]["environment"] == "production"
    assert jobs["plan-prod"]["environment"] == "production-plan"
    for job_id in ("deploy-dev", "deploy-staging", "plan-prod"):
        assert jobs[job_id]["environment"] != "production"
    plan = jobs["plan-prod"]
    assert any(s.get("run") == "bash scripts/ci/pulumi-plan.sh prod prod-plan" for s in plan["steps"])
    (upload,) = _steps_using(plan, "actions/upload-artifact")
    (download,) = _steps_using(jobs["deploy-prod"], "actions/download-artifact")
    assert upload["with"]["name"] == download["with"]["name"] == "prod-plan"
    up = _step_named(deploy, "deploy-prod", "pulumi-up.sh prod")
    assert jobs["deploy-prod"]["steps"][up]["env"]["PLAN"] == f"{download['with']['path']}/plan.json"
    assert jobs["deploy-prod"]["steps"].index(download) < up


def test_every_deploy_refreshes_and_updates_then_smoke_tests(deploy):
    for stack, job_id in DEPLOY_JOBS.items():
        job = deploy["jobs"][job_id]
        up = _step_named(deploy, job_id, f"scripts/ci/pulumi-up.sh {stack}")
        smoke = _step_named(deploy, job_id, f"scripts/ci/smoke.sh {stack}")
        assert up < smoke
        checkout = _steps_using(job, "actions/checkout")[0]
        assert checkout["with"]["ref"] == "${{ env.DEPLOY_SHA }}"


def test_every_pulumi_job_gets_its_environments_own_tokens(deploy):
    for job_id in ("deploy-dev", "deploy-staging", "plan-prod", "deploy-prod"):
        job = deploy["jobs"][job_id]
        assert job["permissions"] == {"contents": "read", "id-token": "write"}
        (auth,) = _steps_using(job, "pulumi/auth-actions")
        assert auth["with"]["scope"] == "team:${{ vars.PULUMI_TEAM }}"  # a variable of the job's environment
        assert auth["with"]["requested-token-type"] == "urn:pulumi:token-type:access_token:team"
        aws = _steps_using(job, "aws-actions/configure-aws-credentials")
        assert bool(aws) == (job_id != "deploy-dev")
        for step in aws:
            assert step["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
            assert not {"aws-access-key-id", "aws-secret-access-key"} & set(step["with"])
    for job_id in ("verify", "prod-deployed"):
        assert "permissions" not in deploy["jobs"][job_id]


def test_rollback_is_one_dispatch_through_the_same_gates(rollback, deploy):
    assert set(rollback["on"]) == {"workflow_dispatch"}
    assert rollback["on"]["workflow_dispatch"]["inputs"]["sha"]["required"] is True
    (job,) = rollback["jobs"].values()
    assert job["uses"] == "./.github/workflows/deploy.yml"
    assert job["with"] == {"sha": "${{ inputs.sha }}"}
    assert "if" not in job
    assert job["permissions"]["id-token"] == "write"
    verify = deploy["jobs"]["verify"]
    ancestry = _step_named(deploy, "verify", "merge-base --is-ancestor")
    assert verify["steps"][ancestry]["run"].count('"$DEPLOY_SHA" origin/main') == 1
    assert _steps_using(verify, "actions/checkout")[0]["with"]["fetch-depth"] == 0
