"""The source of a promotion is what was deployed and smoke-tested, not the working tree: the source stack file
as committed at the commit its deployment record names, in a clean checkout.

`fleet promote` refuses when the record does not show a deployed and smoke-tested commit (fleet.ops.deployment),
when that commit is not in this clone, or when either stack file has uncommitted changes (an edit would
otherwise be promoted untested, or mixed into the promotion's diff).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from fleet.ops.deployment import DeploymentError, DeploymentRecord


class UntestedSourceError(Exception):
    """The source cannot be shown to be what was deployed and smoke-tested."""


@dataclass
class TestedSource:
    commit: str
    text: str  # the source stack file at `commit`
    deployed: dict
    notes: list[str] = field(default_factory=list)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60)


def tested_source(source: str, target: str, root: Path, record: DeploymentRecord) -> TestedSource:
    try:
        commit = record.tested_commit()
        deployed = record.deployed
    except DeploymentError as error:
        raise UntestedSourceError(str(error)) from None
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise UntestedSourceError(f"{root} is not a git checkout: promotion reads the stack file of the tested commit")
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise UntestedSourceError(f"the tested commit {commit} is not in this clone: `git fetch origin` first")
    files = [f"Pulumi.{source}.yaml", f"Pulumi.{target}.yaml"]
    dirty = [line[3:] for line in _git(root, "status", "--porcelain", "--", *files).stdout.splitlines() if line.strip()]
    if dirty:
        raise UntestedSourceError(
            f"uncommitted changes to {', '.join(dirty)}: commit or stash them, "
            "so that only tested values are promoted and the diff shows only the promotion"
        )
    prefix = _git(root, "rev-parse", "--show-prefix").stdout.strip()
    shown = _git(root, "show", f"{commit}:{prefix}{files[0]}")
    if shown.returncode != 0:
        raise UntestedSourceError(f"{files[0]} does not exist at the tested commit {commit}")
    notes = []
    if (root / files[0]).read_text() != shown.stdout:
        notes.append(
            f"{files[0]} has changed since {source} was tested at {commit[:12]}: promoting the tested version, "
            "not the current one"
        )
    return TestedSource(commit, shown.stdout, deployed, notes)
