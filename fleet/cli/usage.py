"""`fleet usage --stack NAME --since 24h`: tokens and requests per client and model, read from Prometheus."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fleet.cli.errors import EXIT_CONFIG, fail
from fleet.config_text import PROM_DURATION
from fleet.stack_file import StackConfigError, load_stack, show_value

EXIT_UNREACHABLE = 1
LOCAL_STATE = Path(".fleet/local/state.json")


def prometheus_url_for(stack: str, given: str | None, state_file: Path = LOCAL_STATE) -> str | None:
    """The URL given, else the one `fleet local up` recorded for this stack, else None."""
    if given:
        return given
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(state, dict) and state.get("stack") == stack and state.get("prometheus_url"):
        return str(state["prometheus_url"])
    return None


def _count(value: float) -> str:
    return f"{round(value):,}"


def usage_table(report, budgets: dict[str, int | None]) -> Table:
    table = Table(title=f"Usage per client over the last {report.window}")
    for column in ("client", "model", "prompt tokens", "completion tokens", "total tokens", "requests"):
        table.add_column(column, justify="left" if column in ("client", "model") else "right")
    totals = report.by_client()
    for row in report.rows:
        table.add_row(row.client, row.model, _count(row.prompt_tokens), _count(row.completion_tokens),
                      _count(row.total_tokens), _count(row.requests))
    for client, total in sorted(totals.items()):
        budget = budgets.get(client)
        note = f" (budget {budget:,}/day)" if budget else ""
        table.add_row(f"[bold]{client}[/bold]", f"all{note}", _count(total.prompt_tokens),
                      _count(total.completion_tokens), f"[bold]{_count(total.total_tokens)}[/bold]", _count(total.requests))
    return table


def register(app: typer.Typer) -> None:
    @app.command("usage")
    def usage(
        stack: str = typer.Option("dev", "--stack", "-s", help="Stack name (Pulumi.<stack>.yaml): its clients and budgets."),
        since: str = typer.Option("24h", "--since", help="Window, a Prometheus duration: 24h, 90m, 7d."),
        prometheus_url: str | None = typer.Option(
            None,
            "--prometheus-url",
            envvar="FLEET_PROMETHEUS_URL",
            help="Prometheus of the stack (`pulumi stack output prometheusUrl`, through SSM port forwarding); "
            "[default: the one `fleet local up` recorded for this stack]",
        ),
        user: str | None = typer.Option(None, "--prometheus-user", envvar="FLEET_PROMETHEUS_USER",
                                        help="User for basic auth. [default: fleet, the stack's Prometheus user, when "
                                        "FLEET_PROMETHEUS_PASSWORD is set]"),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Tokens (prompt, completion) and requests per client and model over a window, from Prometheus.
        The password for basic auth comes from FLEET_PROMETHEUS_PASSWORD, never from the command line."""
        from fleet.render.prometheus_web import PROMETHEUS_USER
        from fleet.usage import PASSWORD_ENV, PrometheusApi, UsageError, check_url, usage_report

        console = Console()
        try:
            PROM_DURATION(since)
        except ValueError as error:
            fail(f"--since {show_value(since)}: {error}", EXIT_CONFIG)
        try:
            settings = load_stack(stack).settings
        except StackConfigError as error:
            fail(str(error), EXIT_CONFIG)
        url = prometheus_url_for(stack, prometheus_url)
        if url is None:
            fail(f"no Prometheus URL for stack {stack}: pass --prometheus-url (or FLEET_PROMETHEUS_URL)", EXIT_CONFIG)
        try:
            check_url(url)
        except UsageError as error:
            fail(str(error), EXIT_CONFIG)
        password = os.environ.get(PASSWORD_ENV)
        api = PrometheusApi(url, username=user or (PROMETHEUS_USER if password else None), password=password)
        clients = [c.name for c in settings.gateway.clients]
        try:
            report = usage_report(api, since, clients)
        except UsageError as error:
            fail(str(error), EXIT_UNREACHABLE)
        if as_json:
            console.print_json(json.dumps(report.to_json()))
            return
        console.print(usage_table(report, {c.name: getattr(c, "tokens_per_day", None) for c in settings.gateway.clients}))
