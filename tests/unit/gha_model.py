"""A small model of how GitHub Actions decides which jobs and steps run: `if:` expressions (`success()`,
`failure()`, `always()`, `cancelled()`, `needs.<job>.result`, `vars.*`, `github.*`, `contains`, `fromJSON`,
`&&`, `||`, `!`, comparisons), the implicit `success() &&` when an expression names no status function, skips
propagating through `needs`, `continue-on-error`, and the run's conclusion (failed when any job failed).

It runs over the parsed workflow files (tests/unit/test_workflows.py) so the delivery gates are proven on the
real YAML, not on a copy of it. Status functions of a job look at all its ancestors through `needs`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>\d+(?:\.\d+)?)|(?P<op>&&|\|\||==|!=|<=|>=|[()!,<>])"
    r"|(?P<ident>[A-Za-z_][\w.-]*))"
)
STATUS_FUNCTIONS = ("success", "failure", "always", "cancelled")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"cannot read expression at {text[pos:]!r}")
        kind = match.lastgroup
        out.append((kind, match.group(kind)))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def unwrap(condition: Any) -> str:
    """The expression inside `${{ … }}` (an `if:` may also be written bare)."""
    text = str(condition).strip()
    if text.startswith("${{") and text.endswith("}}"):
        text = text[3:-2]
    return " ".join(text.split())


def _loose(value: Any) -> Any:
    """GitHub compares strings case-insensitively and null as ''."""
    if value is None:
        return ""
    return value.lower() if isinstance(value, str) else value


def truthy(value: Any) -> bool:
    return value not in (None, "", 0, False)


@dataclass
class Context:
    values: dict[str, Any]  # dotted names: vars.X, needs.job.result, github.ref, inputs.sha …
    status: dict[str, bool]  # success, failure, cancelled

    def lookup(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name.startswith(("vars.", "inputs.", "env.")):
            return None  # an unset variable reads as null
        raise KeyError(f"the model does not know `{name}`")


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], context: Context):
        self.tokens, self.pos, self.context = tokens, 0, context

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise ValueError(f"expected {value!r}, got {token!r}")
        self.pos += 1
        return token

    def parse(self) -> Any:
        value = self.or_()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek()!r}")
        return value

    def or_(self) -> Any:
        value = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            right = self.and_()
            value = value if truthy(value) else right
        return value

    def and_(self) -> Any:
        value = self.compare()
        while self.peek() == ("op", "&&"):
            self.take()
            right = self.compare()
            value = right if truthy(value) else value
        return value

    def compare(self) -> Any:
        value = self.unary()
        while self.peek() in (("op", "=="), ("op", "!=")):
            op = self.take()[1]
            right = self.unary()
            equal = _loose(value) == _loose(right)
            value = equal if op == "==" else not equal
        return value

    def unary(self) -> Any:
        if self.peek() == ("op", "!"):
            self.take()
            return not truthy(self.unary())
        return self.primary()

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return float(text)
        if text == "(":
            value = self.or_()
            self.take(")")
            return value
        if kind == "ident" and self.peek() == ("op", "("):
            self.take("(")
            args = []
            if self.peek() != ("op", ")"):
                args.append(self.or_())
                while self.peek() == ("op", ","):
                    self.take()
                    args.append(self.or_())
            self.take(")")
            return self.call(text, args)
        if kind == "ident":
            if text in ("true", "false"):
                return text == "true"
            if text == "null":
                return None
            return self.context.lookup(text)
        raise ValueError(f"unexpected token {text!r}")

    def call(self, name: str, args: list[Any]) -> Any:
        status = self.context.status
        if name == "success":
            return status["success"] and not status["cancelled"]
        if name == "failure":
            return status["failure"]
        if name == "always":
            return True
        if name == "cancelled":
            return status["cancelled"]
        if name == "fromJSON":
            return json.loads(args[0])
        if name == "toJSON":
            return json.dumps(args[0])
        if name == "contains":
            haystack, needle = args
            if isinstance(haystack, list):
                return any(_loose(item) == _loose(needle) for item in haystack)
            return _loose(needle) in _loose(haystack)
        raise ValueError(f"the model does not implement {name}()")


def evaluate(condition: Any, context: Context) -> bool:
    """An `if:` as GitHub reads it: without a status function it means `success() && (…)`."""
    text = unwrap(condition)
    if not any(re.search(rf"\b{f}\s*\(", text) for f in STATUS_FUNCTIONS):
        text = f"success() && ({text})"
    return truthy(_Parser(_tokens(text), context).parse())


@dataclass(frozen=True)
class Scenario:
    """One way a run can go: settings, the event, and what fails (a step, or a job as a whole — e.g. a
    rejected environment approval fails the job before any step runs)."""

    values: dict[str, Any] = field(default_factory=dict)
    failing_steps: frozenset[tuple[str, int]] = frozenset()  # (job id, step index)
    failing_jobs: frozenset[str] = frozenset()
    cancelled: bool = False


@dataclass
class Run:
    results: dict[str, str]  # job id → success | failure | skipped
    steps_run: dict[str, list[int]]  # job id → indices of the steps that ran

    @property
    def conclusion(self) -> str:
        return "failure" if "failure" in self.results.values() else "success"


def _needs(job: dict) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def _ancestors(jobs: dict, job_id: str) -> set[str]:
    seen: set[str] = set()
    stack = _needs(jobs[job_id])
    while stack:
        parent = stack.pop()
        if parent not in seen:
            seen.add(parent)
            stack.extend(_needs(jobs[parent]))
    return seen


def _order(jobs: dict) -> list[str]:
    ordered: list[str] = []
    while len(ordered) < len(jobs):
        ready = [j for j in jobs if j not in ordered and all(n in ordered for n in _needs(jobs[j]))]
        if not ready:
            raise ValueError("cycle in `needs`")
        ordered.extend(ready)
    return ordered


StepRunner = Callable[[dict, dict[str, str]], bool]  # (step, results of the job's needs) → the step passed


def simulate(workflow: dict, scenario: Scenario, run_steps: dict[str, StepRunner] | None = None) -> Run:
    """`run_steps` executes the steps of the named jobs for real (e.g. a job whose script decides the verdict
    from `needs`); other steps pass unless the scenario fails them."""
    run_steps = run_steps or {}
    jobs = workflow["jobs"]
    results: dict[str, str] = {}
    steps_run: dict[str, list[int]] = {}
    for job_id in _order(jobs):
        job = jobs[job_id]
        ancestors = [results[a] for a in _ancestors(jobs, job_id)]
        values = dict(scenario.values)
        for need in _needs(job):
            values[f"needs.{need}.result"] = results[need]
        status = {
            "success": all(r == "success" for r in ancestors),
            "failure": any(r == "failure" for r in ancestors),
            "cancelled": scenario.cancelled,
        }
        context = Context(values, status)
        if not evaluate(job.get("if", "success()"), context):
            results[job_id] = "skipped"
            continue
        if job_id in scenario.failing_jobs:
            results[job_id] = "failure"
            steps_run[job_id] = []
            continue
        failed = False
        ran: list[int] = []
        for index, step in enumerate(job.get("steps", [])):
            step_context = Context(values, {"success": not failed, "failure": failed, "cancelled": scenario.cancelled})
            if not evaluate(step.get("if", "success()"), step_context):
                continue
            ran.append(index)
            passed = (job_id, index) not in scenario.failing_steps
            if passed and job_id in run_steps:
                passed = run_steps[job_id](step, {n: results[n] for n in _needs(job)})
            if not passed and not step.get("continue-on-error", False):
                failed = True
        steps_run[job_id] = ran
        results[job_id] = "failure" if failed else "success"
    return Run(results, steps_run)
