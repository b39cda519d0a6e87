"""Fixtures shared by the unit tests: `fleet` subcommands run in-process through typer's CliRunner."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner


@pytest.fixture
def capacity_cli():
    """`fleet plan|fit ARGS`: returns typer's result (exit code, output)."""
    from fleet.cli import capacity as cli_capacity

    app = typer.Typer()
    cli_capacity.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


@pytest.fixture
def load_cli() -> typer.Typer:
    """An app with `fleet loadtest` and `fleet tune`, for CliRunner."""
    from fleet.cli.load import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test app"""

    register(app)
    return app
