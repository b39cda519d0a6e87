"""`fleet catalog models|instances`: what the capacity model knows, to choose a model and an instance type."""

from __future__ import annotations

import json

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from fleet import catalog
from fleet.capacity import human
from fleet.cli.console import print_table

catalog_app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    help="List the models and instance types the capacity model knows (with on-demand prices).",
)


def _parameters(count: float) -> str:
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"


def models_table() -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="models (weights per published quantization)", title_justify="left")
    for column in ("model", "architecture", "parameters", "layers", "max context", "kind", "quantizations"):
        table.add_column(column, justify="right" if column in ("parameters", "layers", "max context") else "left")
    for model in sorted(catalog.MODELS.values(), key=lambda m: (m.name, m.parameters)):
        quants = ", ".join(f"{q} {human(model.weights[q])}" for q in model.quantizations())
        table.add_row(
            model.ref, model.arch, _parameters(model.parameters), str(model.n_layer), str(model.max_context),
            "embedding" if model.embedding else "generation", quants,
        )
    return table


def instances_table() -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        title="instance types",
        title_justify="left",
        caption=f"$/h: {catalog.ON_DEMAND_PRICE_SOURCE}",
        caption_justify="left",
    )
    for column in ("instance", "GPUs", "GPU", "VRAM per GPU", "VRAM", "vCPUs", "memory", "$/h on demand"):
        table.add_column(column, justify="left" if column in ("instance", "GPU") else "right")
    rows = sorted(catalog.INSTANCES.values(), key=lambda i: (i.total_vram, i.gpus, i.vcpus, i.name))
    for instance in rows:
        price = instance.on_demand_usd_per_hour
        table.add_row(
            instance.name, str(instance.gpus), instance.gpu_model,
            human(instance.vram_per_gpu) if instance.gpus else "-", human(instance.total_vram) if instance.gpus else "-",
            str(instance.vcpus) if instance.vcpus else "-", human(instance.memory) if instance.memory else "-",
            f"{price:,.3f}" if price is not None else "-",
        )
    return table


@catalog_app.command("models")
def models(json_out: bool = typer.Option(False, "--json", help="Print the models as JSON (sizes in bytes).")) -> None:
    """Models the capacity model can size: architecture numbers and the weights of each quantization."""
    if json_out:
        typer.echo(json.dumps([
            {"model": m.ref, "architecture": m.arch, "parameters": m.parameters, "layers": m.n_layer,
             "maxContext": m.max_context, "embedding": m.embedding, "weights": m.weights, "source": m.source}
            for m in sorted(catalog.MODELS.values(), key=lambda m: (m.name, m.parameters))
        ], indent=2))
        return
    print_table(Console(), models_table())


@catalog_app.command("instances")
def instances(json_out: bool = typer.Option(False, "--json", help="Print the instance types as JSON (sizes in bytes).")) -> None:
    """Instance types: GPUs, VRAM, CPUs, memory and the on-demand price per hour."""
    if json_out:
        typer.echo(json.dumps({
            "priceSource": catalog.ON_DEMAND_PRICE_SOURCE,
            "instances": [
                {"instance": i.name, "gpus": i.gpus, "gpu": i.gpu_model, "vramPerGpu": i.vram_per_gpu,
                 "vcpus": i.vcpus, "memory": i.memory, "onDemandUsdPerHour": i.on_demand_usd_per_hour}
                for i in sorted(catalog.INSTANCES.values(), key=lambda i: (i.total_vram, i.gpus, i.vcpus, i.name))
            ],
        }, indent=2))
        return
    print_table(Console(), instances_table())


def register(app: typer.Typer) -> None:
    """Add the `catalog` command group to the `fleet` app."""
    app.add_typer(catalog_app, name="catalog")
