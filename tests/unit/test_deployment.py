"""Deployment records: read through a fake `pulumi` executable (written here, on PATH), saved by
`fleet deployment-record`, read back from the file, and judged: only a stack deployed and smoke-tested at one
commit, whose last update succeeded at that commit, counts as tested."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fleet.cli.delivery import register
from fleet.ops.deployment import TAG_DEPLOYED, TAG_SMOKE_TESTED, DeploymentError, DeploymentRecord

SHA = "1" * 40
OTHER = "2" * 40
DEPLOYED = {"images": {"ollama": "ollama/ollama:0.13.1@sha256:" + "c" * 64}, "models": {}, "amiId": "ami-0abc12345678def00"}

FAKE_PULUMI = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE/log"
case "$1 $2" in
  "stack output") cat "$FAKE/outputs.json" ;;
  "stack tag") cat "$FAKE/tags.json" ;;
  "stack history") cat "$FAKE/history.json" ;;
  *) exit 2 ;;
esac
"""


def update(commit: str, kind: str = "update", result: str = "succeeded") -> dict:
    return {"kind": kind, "result": result, "version": 7, "environment": {"git.head": commit, "exec.kind": "cli"}}


def record(tags: dict, history: list) -> DeploymentRecord:
    return DeploymentRecord("staging", {"deployed": DEPLOYED, "apiKeys": "[secret]"}, tags, history)


def test_a_deployed_and_smoke_tested_commit_counts():
    tested = record({TAG_DEPLOYED: SHA, TAG_SMOKE_TESTED: SHA}, [update(SHA, "refresh"), update(SHA)])
    assert tested.tested_commit() == SHA
    assert tested.deployed == DEPLOYED


@pytest.mark.parametrize(
    "tags, history, says",
    [
        ({}, [update(SHA)], "never deployed"),
        ({TAG_DEPLOYED: SHA}, [update(SHA)], "has not passed a smoke test"),
        ({TAG_DEPLOYED: SHA, TAG_SMOKE_TESTED: OTHER}, [update(SHA)], f"its smoke test passed at {OTHER}"),
        ({TAG_DEPLOYED: SHA, TAG_SMOKE_TESTED: SHA}, [update(SHA, result="failed")], "update that failed"),
        ({TAG_DEPLOYED: SHA, TAG_SMOKE_TESTED: SHA}, [update(OTHER), update(SHA)], f"ran from commit {OTHER}"),
        ({TAG_DEPLOYED: SHA, TAG_SMOKE_TESTED: SHA}, [update(SHA, "destroy")], "destroy"),
        ({TAG_DEPLOYED: SHA, TAG_SMOKE_TESTED: SHA}, [update(SHA, "refresh")], "no update in its history"),
    ],
)
def test_anything_else_is_refused(tags, history, says):
    with pytest.raises(DeploymentError, match=says):
        record(tags, history).tested_commit()


def test_an_old_program_without_the_deployed_output_is_refused():
    with pytest.raises(DeploymentError, match="no `deployed` output"):
        _ = DeploymentRecord("prod", {"gatewayUrl": "https://x"}).deployed


@pytest.fixture
def fake_pulumi(tmp_path: Path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pulumi").write_text(FAKE_PULUMI)
    (bin_dir / "pulumi").chmod(0o755)
    (tmp_path / "outputs.json").write_text(json.dumps({"deployed": DEPLOYED, "apiKeys": "[secret]"}))
    (tmp_path / "tags.json").write_text(json.dumps({TAG_DEPLOYED: SHA, TAG_SMOKE_TESTED: SHA, "pulumi:project": "ollama-fleet"}))
    (tmp_path / "history.json").write_text(json.dumps([update(SHA)]))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE", str(tmp_path))
    return tmp_path


def test_the_cli_saves_the_record_and_it_reads_back(fake_pulumi: Path):
    app = typer.Typer()
    register(app)
    out = fake_pulumi / "record.json"
    result = CliRunner().invoke(app, ["deployment-record", "staging", "--out", str(out)])
    assert result.exit_code == 0, result.output
    calls = (fake_pulumi / "log").read_text().splitlines()
    assert "stack output --json --stack staging" in calls  # never --show-secrets: the record holds no secret
    assert all("--show-secrets" not in call for call in calls)
    back = DeploymentRecord.from_file(out, "staging")
    assert back.tested_commit() == SHA and back.deployed == DEPLOYED
    with pytest.raises(DeploymentError, match="not a deployment record of stack 'prod'"):
        DeploymentRecord.from_file(out, "prod")


def test_a_failing_cli_is_reported_not_raised(fake_pulumi: Path):
    (fake_pulumi / "bin" / "pulumi").write_text("#!/usr/bin/env bash\necho 'error: no stack named staging' >&2\nexit 255\n")
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["deployment-record", "staging", "--out", str(fake_pulumi / "r.json")])
    assert result.exit_code == 1
    assert "no stack named staging" in result.output and "Traceback" not in result.output
