"""The offline preview runs the real program and writes no file: the deployer's SSH files are written by a
command the Pulumi engine runs (pulumi-command's `local.run`), which the mock cloud answers without running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.mark.parametrize("ssh_dir_set", [True, False])
def test_an_aws_preview_writes_no_ssh_file(tmp_path, ssh_dir_set):
    temporary, ssh_dir, out = tmp_path / "tmp", tmp_path / "ssh", tmp_path / "preview.json"
    temporary.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "OLLAMA_FLEET_SSH_DIR"}
    env["TMPDIR"] = str(temporary)  # the default SSH folder lives in the temporary directory
    if ssh_dir_set:
        env["OLLAMA_FLEET_SSH_DIR"] = str(ssh_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "preview", "--stack", "prod", "--no-tree", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert not ssh_dir.exists() and files_under(temporary) == []

    commands = [r for r in data["resources"] if r["type"] == "command:local:Command" and r["name"].endswith("-ssh-files")]
    instances = [r for r in data["resources"] if r["type"] == "aws:ec2/instance:Instance"]
    assert commands and len(commands) == len(instances), "one ssh-files command per AWS host"
    folder = ssh_dir / "prod" if ssh_dir_set else temporary / f"ollama-fleet-{os.getuid()}" / "prod"
    for command in commands:
        host = command["name"].removesuffix("-ssh-files")
        assert f"rm -f {folder}/{host}.key {folder}/{host}.known_hosts" in command["inputs"]["delete"]
    assert "PRIVATE KEY-----\nmock" not in out.read_text() + proc.stdout + proc.stderr
