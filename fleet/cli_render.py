"""`fleet render --stack NAME --out DIR`: write every rendered config file of a stack for review."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fleet.stack_file import StackConfigError, load_stack
from fleet.text import counted

EXIT_CONFIG = 2


def register(app: typer.Typer) -> None:
    @app.command("render")
    def render(
        stack: str = typer.Option("dev", "--stack", "-s", help="Stack name (Pulumi.<stack>.yaml)."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder to write the files into (created if needed)."),
    ) -> None:
        """Write the nginx, Prometheus, alert-rule, Grafana and cloud-init files a stack deploys (no secrets)."""
        from fleet.render.bundle import render_bundle, write_bundle
        from fleet.render.nginx import GatewayPlanError
        from fleet.render.prometheus import PrometheusPlanError

        console, err = Console(), Console(stderr=True)
        try:
            config = load_stack(stack)
            files = render_bundle(config.settings, config.stack)
        except (StackConfigError, GatewayPlanError, PrometheusPlanError) as error:
            err.print(f"[bold red]error:[/bold red] {error}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_CONFIG) from None
        written = write_bundle(files, out)
        for path in written:
            console.print(f"wrote {path}", highlight=False)
        console.print(f"{counted(len(written), 'file')} for stack {config.stack} in {out}", highlight=False)
