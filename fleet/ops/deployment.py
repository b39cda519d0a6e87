"""What a stack really runs, as its deployment record: the stack's outputs (secrets stay masked), its tags and its
update history, read through the Pulumi CLI or from a file saved by the deploy workflow (offline use).

The deploy workflow (scripts/ci) tags a stack `fleet:deployed-commit` after `pulumi up` and
`fleet:smoke-tested-commit` after a passing smoke test. `tested_commit` accepts a record only when both name
the same commit and the stack's last update succeeded at that commit: that is what `fleet promote` carries on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TAG_DEPLOYED = "fleet:deployed-commit"
TAG_SMOKE_TESTED = "fleet:smoke-tested-commit"
# Kinds of history entries that change what a stack runs (a refresh or preview does not).
_CHANGING_KINDS = {"update", "destroy", "import", "rename"}


class DeploymentError(Exception):
    """The deployment record cannot be read, or does not show a deployed and smoke-tested commit."""


@dataclass
class DeploymentRecord:
    stack: str
    outputs: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # newest first, as `pulumi stack history`

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, path: Path, stack: str) -> "DeploymentRecord":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DeploymentError(f"{path}: not a readable deployment record ({error})") from None
        if not isinstance(data, dict) or data.get("stack") != stack:
            raise DeploymentError(f"{path}: not a deployment record of stack {stack!r} (it names {data.get('stack')!r})")
        try:
            return cls(stack, dict(data.get("outputs") or {}), dict(data.get("tags") or {}), list(data.get("history") or []))
        except (TypeError, ValueError):
            raise DeploymentError(f"{path}: outputs and tags must be mappings, history a list") from None

    @classmethod
    def from_pulumi(cls, stack: str, cwd: Path, pulumi: str = "pulumi") -> "DeploymentRecord":
        if shutil.which(pulumi) is None:
            raise DeploymentError(
                "the Pulumi CLI is not on PATH: log in to the stacks' backend, or pass the deployment record the "
                "deploy workflow saved (artifact deployment-record-STACK) with --record FILE"
            )
        outputs = _pulumi_json([pulumi, "stack", "output", "--json", "--stack", stack], cwd)
        tags = _pulumi_json([pulumi, "stack", "tag", "ls", "--json", "--stack", stack], cwd)
        history = _pulumi_json([pulumi, "stack", "history", "--json", "--page-size", "20", "--stack", stack], cwd)
        return cls(stack, outputs or {}, tags or {}, history or [])

    def tested_commit(self) -> str:
        """The commit the stack runs and passed its smoke test at; DeploymentError otherwise."""
        deployed = self.tags.get(TAG_DEPLOYED)
        tested = self.tags.get(TAG_SMOKE_TESTED)
        if not deployed:
            raise DeploymentError(f"{self.stack} has no {TAG_DEPLOYED} tag: it was never deployed by the pipeline")
        if tested != deployed:
            state = f"its smoke test passed at {tested}" if tested else "it has not passed a smoke test"
            raise DeploymentError(f"{self.stack} runs {deployed}, but {state}: deploy and smoke-test it first")
        last = next((entry for entry in self.history if entry.get("kind") in _CHANGING_KINDS), None)
        if last is None:
            raise DeploymentError(f"{self.stack} has no update in its history")
        if last.get("kind") != "update" or last.get("result") != "succeeded":
            raise DeploymentError(
                f"{self.stack}'s last change is a {last.get('kind')} that {last.get('result')}: what it runs is not what was tested"
            )
        head = (last.get("environment") or {}).get("git.head")
        if head and head != deployed:
            raise DeploymentError(
                f"{self.stack}'s last update ran from commit {head}, not the tested {deployed} (a later `pulumi up` "
                "from elsewhere?): deploy it through the pipeline again"
            )
        return deployed

    @property
    def deployed(self) -> dict[str, Any]:
        """The `deployed` output: resolved image references, model digests per node group, the AMI id."""
        value = self.outputs.get("deployed")
        if not isinstance(value, dict):
            raise DeploymentError(f"{self.stack} exports no `deployed` output: deploy it with this version of the program")
        return value


def _pulumi_json(command: list[str], cwd: Path) -> Any:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeploymentError(f"`{' '.join(command)}` did not answer within 120 s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise DeploymentError(f"`{' '.join(command)}` failed: {detail[-1] if detail else f'exit {done.returncode}'}")
    try:
        return json.loads(done.stdout or "null")
    except ValueError:
        raise DeploymentError(f"`{' '.join(command)}` did not print JSON") from None
