"""The `fleet` command."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from fleet.cli.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_POLICY, FleetGroup, fail, program_failure
from fleet.cli.console import print_table
from fleet.stack_file import StackConfig, StackConfigError, load_stack
from fleet.text import counted

app = typer.Typer(
    cls=FleetGroup,
    add_completion=False,
    rich_markup_mode=None,  # plain help: wraps to the terminal, never cuts a value
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="ollama-fleet: preview, plan, render, test and tune a production Ollama service.",
)
console = Console()


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"ollama-fleet {version('ollama-fleet')}", highlight=False)
        except PackageNotFoundError:  # run from a source tree that was never installed
            console.print("ollama-fleet (not installed: run bash scripts/bootstrap.sh)", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """ollama-fleet: preview, plan, render, test and tune a production Ollama service."""


def checked_stack(stack: str) -> StackConfig:
    """The stack file, loaded and checked as `fleet validate` checks it; exit 2 naming what is wrong."""
    from fleet.cli import capacity as cli_capacity
    from fleet.plans.checks import check_plans

    try:
        config = load_stack(stack)
        check_plans(config)
    except StackConfigError as error:
        fail(str(error), EXIT_CONFIG)
    cli_capacity.stack_ollama_version(config)
    return config


@app.command()
def validate(stack: str = typer.Option("dev", "--stack", "-s", help="Stack name (Pulumi.<stack>.yaml).")) -> None:
    """Check a stack file: known keys, types, allowed values, secrets stored encrypted, and what the program's
    planners would refuse (network, Ollama nodes, gateway, monitoring, alert receivers' secrets)."""
    config = checked_stack(stack)
    console.print(f"{config.path.name}: valid ({counted(config.settings.node_count, 'node')}, target {config.settings.target})")


@app.command()
def preview(
    stack: str = typer.Option("dev", "--stack", "-s", help="Stack name (Pulumi.<stack>.yaml)."),
    json_out: Path | None = typer.Option(
        None, "--json", show_default=False, help="Also write the recorded resources as JSON here. [default: none]"
    ),
    tree: bool = typer.Option(True, "--tree/--no-tree", help="Print the resource tree."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback when the program fails."),
) -> None:
    """Offline preview: the resource plan, the capacity table and the policy verdict, with no cloud and no Pulumi CLI."""
    from fleet.cli import capacity as cli_capacity
    from fleet.preview import offline as preview_mod

    stack_config = checked_stack(stack)
    try:
        result = preview_mod.run_program(stack_config)
    except StackConfigError as error:
        fail(str(error), EXIT_CONFIG)
    except Exception as error:  # the program refused the stack (a renderer or component check)
        if debug:
            import traceback

            traceback.print_exc()
            raise typer.Exit(EXIT_FAILED) from None
        fail(f"{stack_config.path.name}: the program failed: {program_failure(error)}", EXIT_FAILED,
             hint="(run with --debug for the traceback)")
    if tree:
        console.print(preview_mod.resource_tree(result))
    print_table(console, preview_mod.counts_table(result))
    if json_out:
        json_out.write_text(json.dumps(preview_mod.to_json(result), indent=2))
        console.print(f"resources written to {json_out}")

    code = 0
    from fleet.preview.policy_runner import evaluate

    capacity_ok = cli_capacity.print_plan(console, stack_config)
    report = evaluate(result.resources, stack_config.stack)
    console.print(report.render())
    if report.mandatory_failed:
        code = EXIT_POLICY
    if not capacity_ok and code == 0 and stack_config.settings.policy.enforcement == "mandatory":
        code = EXIT_POLICY
    raise typer.Exit(code)


@app.command()
def docs(out: Path = typer.Option(Path("docs/configuration.md"), "--out", help="Where to write the reference.")) -> None:
    """Write the configuration reference, generated from the config models."""
    from fleet.config_docs import render_reference

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_reference())
    console.print(f"wrote {out}")


def _register_subcommands() -> None:
    from fleet.cli import capacity as cli_capacity
    from fleet.cli import catalog as cli_catalog
    from fleet.cli import delivery as cli_delivery
    from fleet.cli import load as cli_load
    from fleet.cli import local as cli_local
    from fleet.cli import render as cli_render
    from fleet.cli import usage as cli_usage

    for module in (cli_capacity, cli_catalog, cli_render, cli_load, cli_delivery, cli_local, cli_usage):
        module.register(app)


_register_subcommands()


def main() -> None:
    app()
