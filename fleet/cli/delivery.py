"""Delivery commands of `fleet`: `smoke` (check a deployed endpoint), `promote` (carry tested config forward) and
`deployment-record` (save what a stack runs, for promotion where Pulumi is not reachable)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fleet.cli.errors import EXIT_CONFIG, EXIT_FAILED, err, fail, print_error

console = Console()

_STATUS_STYLE = {"PASS": "bold green", "FAIL": "bold red", "SKIP": "yellow"}


def smoke(
    url: str = typer.Argument(..., help="Gateway base URL, e.g. https://llm.example.com or https://127.0.0.1:8443."),
    api_key: str = typer.Option(
        ..., "--api-key", envvar="FLEET_API_KEY", help="A client API key (or FLEET_API_KEY). Never printed."
    ),
    admin_key: str | None = typer.Option(
        None, "--admin-key", envvar="FLEET_ADMIN_KEY",
        show_default=False,
        help="The admin key (or FLEET_ADMIN_KEY): also check it reaches an admin route (from an admin CIDR only). "
        "[default: none, not checked]",
    ),
    model: str | None = typer.Option(
        None, "--model", show_default=False, help="Model to generate with. [default: the first one /api/tags lists]"
    ),
    insecure: bool = typer.Option(False, "--insecure", help="Do not verify the TLS certificate (self-signed dev/staging)."),
    ca_cert: str | None = typer.Option(
        None, "--ca-cert", show_default=False,
        help="Verify the gateway's certificate with this CA bundle instead. [default: the system's CAs]",
    ),
    metrics_url: str | None = typer.Option(
        None, "--metrics-url",
        show_default=False,
        help="Prometheus base URL (query API) or a metering exporter's /metrics URL; checks ollama_inference_tokens_total. "
        "[default: none, not checked]",
    ),
    metrics_password: str | None = typer.Option(
        None, "--metrics-password", envvar="FLEET_PROMETHEUS_PASSWORD", show_default=False,
        help="Prometheus' password (user fleet; or FLEET_PROMETHEUS_PASSWORD), sent with --metrics-url. Never printed. "
        "[default: none]",
    ),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per request (generation: --generate-timeout)."),
    generate_timeout: float = typer.Option(180.0, "--generate-timeout", help="Seconds for the generation (a cold node loads the model first)."),
    metrics_wait: float = typer.Option(45.0, "--metrics-wait", help="Seconds to wait for the tokens to show in the metrics."),
) -> None:
    """Smoke-test a deployed gateway: health, 401 without a key, a real generation, admin routes closed, metrics."""
    from fleet.render.prometheus_web import PROMETHEUS_USER
    from fleet.ops.smoke import CheckResult, SmokeOptions, run_smoke

    options = SmokeOptions(
        url=url, api_key=api_key, admin_key=admin_key, model=model, metrics_url=metrics_url, insecure=insecure,
        metrics_auth=(PROMETHEUS_USER, metrics_password) if metrics_password else None,
        ca_cert=ca_cert, timeout_s=timeout, generate_timeout_s=generate_timeout, metrics_wait_s=metrics_wait,
    )
    table = Table(title=f"smoke test of {url}")
    for column in ("check", "expected", "got", "result"):
        table.add_column(column, overflow="fold")

    def add(result: CheckResult) -> None:
        got = f"{result.got} — {result.detail}" if result.detail else result.got
        table.add_row(result.name, result.expected, got, Text(result.status, style=_STATUS_STYLE[result.status]))

    if console.is_terminal:  # rows appear as the checks finish
        with Live(table, console=console, refresh_per_second=4, transient=False):
            report = run_smoke(options, on_result=add)
    else:  # logs (CI): the whole table once
        report = run_smoke(options, on_result=add)
        console.print(table)
    if report.ok:
        skipped = sum(1 for r in report.results if r.ok is None)
        console.print(f"[bold green]smoke test passed[/] ({len(report.results) - skipped} checks, {skipped} skipped)")
        return
    fail(", ".join(r.name for r in report.failed), EXIT_FAILED, label="smoke test failed")


def _print_diff(diff: str) -> None:
    for line in diff.splitlines():
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else "cyan" if line.startswith("@@") else ""
        if line.startswith(("+++", "---")):
            style = "bold"
        console.print(Text(line, style=style), soft_wrap=True)


def promote(
    source: str = typer.Argument(..., metavar="FROM", help="Stack whose tested values are promoted, e.g. staging."),
    target: str = typer.Argument(..., metavar="TO", help="Stack that receives them, e.g. prod."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Write without asking (CI)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the diff and the verdict; write nothing."),
    record: Path | None = typer.Option(
        None, "--record", show_default=False,
        help="FROM's deployment record (artifact deployment-record-FROM of the deploy run) instead of asking Pulumi. "
        "[default: none, Pulumi is asked]",
    ),
) -> None:
    """Carry what FROM really ran — tested there — to TO's stack file: images, model digests, the AMI, and the
    values meant to travel between these two stacks.

    Refused unless FROM was deployed and smoke-tested at one commit (its stack tags and history, or --record);
    the values come from FROM's stack file at that commit and from its `deployed` output. Shows the diff first,
    keeps TO's own values (placement, counts, queue and rate limits, domain, TLS, CIDRs, clients, monitoring,
    policy, tags, secrets) and refuses when TO's policy verdict or capacity check fails.
    """
    from fleet.ops import promote as promotion
    from fleet.ops.deployment import DeploymentError, DeploymentRecord
    from fleet.stack_file import project_root
    from fleet.ops.tested_source import UntestedSourceError, tested_source

    root = project_root()
    try:
        promotion.promoted_keys(source, target)
        deployment = DeploymentRecord.from_file(record, source) if record else DeploymentRecord.from_pulumi(source, root)
        tested = tested_source(source, target, root, deployment)
    except promotion.PromotionError as error:
        fail(str(error), EXIT_CONFIG)
    except (DeploymentError, UntestedSourceError) as error:
        fail(str(error), EXIT_FAILED, label="refused")
    console.print(f"{source} was deployed and smoke-tested at {tested.commit}: promoting that")
    try:
        plan = promotion.plan_promotion(source, target, root, source_text=tested.text, deployed=tested.deployed)
    except promotion.PromotionError as error:
        fail(str(error), EXIT_CONFIG)
    plan.notes[:0] = tested.notes
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if not plan.changed:
        console.print(f"{plan.target_path.name} already has {source}'s promoted values: nothing to do")
        return

    _print_diff(plan.diff)
    table = Table(title=f"promoted keys: {source} → {target}")
    table.add_column("key", overflow="fold")
    table.add_column(f"{target} now", overflow="fold")
    table.add_column(f"from {source}", overflow="fold")
    for change in plan.changes:
        table.add_row(change.path, change.show(change.before), change.show(change.after))
    console.print(table)

    console.print(f"checking the promoted {target} stack: validation, capacity, offline preview with the policy pack …")
    verdict = promotion.check_candidate(plan, root)
    for warning in verdict.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if not verdict.ok:
        if verdict.preview_output:
            tail = "\n".join(verdict.preview_output.rstrip().splitlines()[-60:])
            console.print(Text(tail), soft_wrap=True)
        for problem in verdict.problems:
            print_error(problem, label="refused")
        err.print(f"{plan.target_path.name} is unchanged.")
        raise typer.Exit(verdict.exit_code or EXIT_FAILED)
    console.print(f"[green]the promoted {target} stack passes validation, capacity and its policies[/]")

    if dry_run:
        console.print(f"dry run: {plan.target_path.name} is unchanged")
        return
    if not yes:
        if not _interactive():
            err.print("refusing to write without confirmation: pass --yes (or run in a terminal)")
            raise typer.Exit(EXIT_FAILED)
        if not typer.confirm(f"write {plan.target_path.name}?", default=False):
            err.print(f"{plan.target_path.name} is unchanged.")
            raise typer.Exit(EXIT_FAILED)
    promotion.write_candidate(plan)
    console.print(
        f"wrote {plan.target_path.name}; review and commit it — the pipeline previews it on the pull request "
        f"and deploys {target} after merge"
    )


def deployment_record(
    stack: str = typer.Argument(..., help="Stack whose deployment record is read (through the Pulumi CLI)."),
    out: Path = typer.Option(..., "--out", help="JSON file to write: outputs (secrets masked), tags, update history."),
) -> None:
    """Save what STACK runs (outputs, tags, history) for `fleet promote --record` where Pulumi is not reachable."""
    from fleet.ops.deployment import DeploymentError, DeploymentRecord
    from fleet.stack_file import project_root

    try:
        record = DeploymentRecord.from_pulumi(stack, project_root())
    except DeploymentError as error:
        fail(str(error), EXIT_FAILED)
    out.write_text(record.to_json())
    console.print(f"wrote the deployment record of {stack} to {out}")


def _interactive() -> bool:
    import sys

    return sys.stdin.isatty()


def register(app: typer.Typer) -> None:
    app.command("smoke")(smoke)
    app.command("promote")(promote)
    app.command("deployment-record")(deployment_record)

