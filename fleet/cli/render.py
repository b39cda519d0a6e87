"""`fleet render --stack NAME --out DIR`: write every file a stack's program deploys, for review."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fleet.cli.errors import EXIT_CONFIG, EXIT_FAILED, fail, output_folder, program_failure
from fleet.stack_file import StackConfigError, load_stack
from fleet.text import counted


def register(app: typer.Typer) -> None:
    @app.command("render")
    def render(
        stack: str = typer.Option("dev", "--stack", "-s", help="Stack name (Pulumi.<stack>.yaml)."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder to write the files into (created if needed)."),
    ) -> None:
        """Write the files the program deploys (nginx, Prometheus, alert rules, Grafana, host setup scripts), taken
        from the program run offline under Pulumi's mocks, as `fleet preview` runs it; no secrets."""
        from fleet.preview import offline as preview
        from fleet.render.bundle import program_files, stand_ins, write_bundle

        console = Console()
        try:
            config = load_stack(stack)
        except StackConfigError as error:
            fail(str(error), EXIT_CONFIG)
        output_folder(out)
        try:
            result = preview.run_program(config)
        except StackConfigError as error:
            fail(str(error), EXIT_CONFIG)
        except Exception as error:  # the program refused the stack (a renderer or component check)
            fail(f"{config.path.name}: the program failed: {program_failure(error)}", EXIT_FAILED)
        written = write_bundle(program_files(result.resources, stand_ins(config.settings)), out)
        for path in written:
            console.print(f"wrote {path}", highlight=False, soft_wrap=True)
        console.print(f"{counted(len(written), 'file')} for stack {config.stack} in {out}", highlight=False)
