"""`fleet plan` and `fleet fit`: the capacity model's verdict as tables (or JSON), with what to change."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table

from fleet import capacity
from fleet.capacity import CapacityError, NodeEstimate, human
from fleet.capacity_limits import GroupLimits, group_limits
from fleet.capacity_limits import describe as describe_limits
from fleet.catalog import GIB, MIB
from fleet.config import MAX_MEMORY_GIB
from fleet.policy_config import judged_headroom
from fleet.cli.errors import EXIT_CONFIG, fail
from fleet.cli.console import print_table
from fleet.stack_file import StackConfig, StackConfigError, load_stack, show_value

EXIT_DOES_NOT_FIT = 1

app = typer.Typer(add_completion=False, rich_markup_mode=None, no_args_is_help=True, pretty_exceptions_enable=False, help="Capacity planning.")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _size(value: int) -> str:
    """Compact bytes for table cells: 4.29G (GiB), 180M (MiB)."""
    if value >= 100 * GIB:
        return f"{value / GIB:.0f}G"
    if value >= GIB:
        return f"{value / GIB:.2f}G"
    return f"{value / MIB:.0f}M"


def _verdict(estimate: NodeEstimate) -> str:
    if not estimate.has_verdict:
        return "[yellow]n/a (CPU)[/yellow]"
    return "[green]fits[/green]" if estimate.fits else "[bold red]no fit[/bold red]"


def estimate_table(estimate: NodeEstimate, title: str | None = None) -> Table:
    """One row per model and a node row: weights, KV, graph, overhead, total against VRAM and headroom."""
    first = estimate.models[0] if estimate.models else None
    knobs = f"kv {first.kv_cache_type}, flash attention {'on' if first.flash_attention else 'off'}" if first else ""
    where = (
        f"{estimate.gpus} × {human(estimate.vram_per_gpu)} {estimate.gpu_model} "
        f"({human(estimate.driver_reserved)} each kept by the driver)"
        if not estimate.cpu_only
        else (f"RAM {human(estimate.memory)}" if estimate.memory else "CPU, system RAM")
    )
    heading = title or f"node group {estimate.group} on {estimate.instance_type}"
    rules = f"Ollama {estimate.ollama_version} (rules {estimate.ollama_rules}); " if estimate.ollama_version else ""
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"{heading}\n{where}; {knobs}; headroom ≥{estimate.headroom:.0%}; {rules}G = GiB, M = MiB",
        title_justify="left",
    )
    for column in ("model", "quant", "ctx×par", "weights", "KV", "graph", "overhead", "total", "VRAM", "headroom", "verdict"):
        left = column in ("model", "quant", "verdict")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for model in estimate.models:
        ctx = f"{model.num_ctx}" + ("*" if model.num_ctx_source == "vram-tier" else "") + f"×{model.num_parallel}"
        spans = f"×{model.gpus}" if model.gpus > 1 else ""
        table.add_row(
            model.ref + ("" if model.resident else " (on demand)"),
            model.quantization,
            ctx,
            _size(model.weights),
            _size(model.kv_cache),
            _size(model.graph) + spans,
            "",
            _size(model.total),
            "",
            "",
            "",
        )
    table.add_row(
        "[b]node[/b]",
        "",
        "",
        _size(estimate.weights),
        _size(estimate.kv_cache),
        _size(estimate.graph),
        _size(estimate.overhead),
        f"[b]{_size(estimate.total)}[/b]",
        _size(estimate.capacity) if estimate.capacity else "-",
        _share(estimate.free_share),
        _verdict(estimate),
    )
    return table


def print_estimate(console: Console, estimate: NodeEstimate, title: str | None = None, limits: GroupLimits | None = None) -> None:
    print_table(console, estimate_table(estimate, title))
    if any(m.num_ctx_source == "vram-tier" for m in estimate.models):
        console.print("  * numCtx unset: Ollama's VRAM-tier default context")
    if not estimate.cpu_only and len(estimate.gpu_usage) > 1:
        used = [g for g in estimate.gpu_usage if g.models]
        parts = ", ".join(f"GPU{g.index} {human(g.total)}/{human(g.usable)}" for g in used)
        console.print(f"  per GPU: {parts}")
    for model in estimate.models:
        for note in model.notes:
            console.print(f"  [yellow]![/yellow] {model.ref}: {note}", highlight=False, soft_wrap=True)
    for problem in estimate.problems:
        console.print(f"  [red]✗[/red] {problem}", highlight=False, soft_wrap=True)
    if estimate.suggestions:
        console.print("  to make it fit, any one of:")
        for suggestion in estimate.suggestions:
            console.print(f"    • {suggestion}", highlight=False, soft_wrap=True)
    if limits is not None:
        for line in describe_limits(limits):
            console.print(f"  {line}", highlight=False, soft_wrap=True)


def stack_ollama_version(config: StackConfig) -> str:
    """The Ollama release the stack's image deploys; a clear error (exit 2) when the capacity model has no rules
    for it."""
    try:
        version = capacity.supported_version_of_image(config.settings.images.ollama)
    except CapacityError as error:
        fail(f"{config.path.name}: images.ollama: {error}", EXIT_CONFIG)
    return version


def plan_headroom(stack_config: StackConfig) -> float:
    """The headroom the policy pack judges this stack with (fleet.policy_config.judged_headroom), so that what the
    plan calls a fit, and every change it suggests, passes vram-fit too."""
    return judged_headroom(stack_config.stack, stack_config.settings.policy.vram_headroom)


def print_plan(console: Console, stack_config: StackConfig) -> bool:
    """Print the capacity table of every node group; True when every group fits (a CPU group without `local.memoryGib` has no verdict and passes)."""
    settings = stack_config.settings
    headroom = plan_headroom(stack_config)
    version = capacity.version_of_image(settings.images.ollama)
    ok = True
    for group in settings.node_groups:
        estimate = capacity.estimate_node(
            group, headroom, stack_config.path.parent, version, host_memory=capacity.host_memory(settings, group)
        )
        title = f"{stack_config.stack}: node group {group.name}, {group.count} × {group.instance_type}"
        print_estimate(console, estimate, title, group_limits(group, headroom, stack_config.path.parent, version))
        queue = capacity.queue_per_node(group, settings.gateway)
        conns = capacity.max_conns_per_node(group, queue)
        console.print(
            f"  gateway max_conns per node: {conns} "
            f"(numParallel {group.ollama.num_parallel} × {capacity.slot_models(group)} resident + "
            f"queue {queue})"
        )
        ok = ok and estimate.fits
    return ok


# The option of `fleet fit` that sets each field of the one-model group it checks.
_FIT_OPTIONS = {
    "num_ctx": "--num-ctx", "num_parallel": "--num-parallel", "quantization": "--quant", "kv_cache_type": "--kv-cache-type",
    "flash_attention": "--flash-attention", "instance_type": "--instance", "name": "--model", "tag": "--model",
    "gguf": "--model",
}


def _validation_message(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        fields = [str(p) for p in item["loc"] if not str(p).startswith("function-") and not isinstance(p, int)]
        where = next((_FIT_OPTIONS[f] for f in reversed(fields) if f in _FIT_OPTIONS), ".".join(fields))
        message = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        shown = f" (got {show_value(got)})" if isinstance(got, (str, int, float)) and where else ""
        lines.append(f"{where}: {message}{shown}" if where else message)
    return "; ".join(lines)


def plan(
    stack: str = typer.Option("dev", "--stack", "-s", help="Stack name (Pulumi.<stack>.yaml)."),
    json_out: bool = typer.Option(False, "--json", help="Print the estimates as JSON (every term in bytes)."),
) -> None:
    """Capacity per node group: weights, KV cache, graph and overhead against VRAM; exits 1 when something does not fit."""
    out = Console()
    try:
        config = load_stack(stack)
    except StackConfigError as error:
        fail(str(error), EXIT_CONFIG)
    stack_ollama_version(config)
    try:
        if json_out:
            headroom = plan_headroom(config)
            version = capacity.version_of_image(config.settings.images.ollama)
            estimates = [
                capacity.estimate_node(g, headroom, config.path.parent, version, host_memory=capacity.host_memory(config.settings, g))
                for g in config.settings.node_groups
            ]
            payload = {
                "stack": config.stack,
                "ollamaVersion": version,
                "ollamaRules": capacity.rules_of(version).name,
                "groups": [
                    {
                        **e.to_dict(),
                        "maxConnsPerNode": capacity.max_conns_per_node(g, capacity.queue_per_node(g, config.settings.gateway)),
                        "limits": _limits_dict(group_limits(g, headroom, config.path.parent, version)),
                    }
                    for e, g in zip(estimates, config.settings.node_groups)
                ],
            }
            typer.echo(json.dumps(payload, indent=2))
            ok = all(e.fits for e in estimates)
        else:
            ok = print_plan(out, config)
    except (CapacityError, ValueError) as error:
        fail(f"{config.path.name}: {error}", EXIT_CONFIG)
    raise typer.Exit(0 if ok else EXIT_DOES_NOT_FIT)


def fit(
    model: str = typer.Option(..., "--model", "-m", help="Model `name:tag` from the catalog, or a path to a GGUF file."),
    quant: str = typer.Option("q4_K_M", "--quant", "-q", help="Weight quantization (q4_0, q4_K_M, q5_K_M, q8_0, fp16, ...)."),
    num_ctx: int | None = typer.Option(
        None, "--num-ctx", show_default=False, help="Context per slot. [default: Ollama's VRAM-tier default for the GPU]"
    ),
    num_parallel: int = typer.Option(1, "--num-parallel", "-p", help="OLLAMA_NUM_PARALLEL."),
    instance: str = typer.Option(..., "--instance", "-i", help="Instance type (g6e.xlarge, p5.48xlarge, local-cpu, ...)."),
    kv_cache_type: str = typer.Option("f16", "--kv-cache-type", help="OLLAMA_KV_CACHE_TYPE: f16, q8_0 or q4_0."),
    flash_attention: bool = typer.Option(True, "--flash-attention/--no-flash-attention", help="OLLAMA_FLASH_ATTENTION."),
    headroom: float = typer.Option(capacity.DEFAULT_HEADROOM, "--headroom", help="Share of VRAM kept free beyond the estimate."),
    json_out: bool = typer.Option(False, "--json", help="Print every term in bytes and the verdict as JSON."),
    ollama_version: str | None = typer.Option(
        None, "--ollama-version", show_default=False,
        help="Ollama release whose memory rules apply. [default: the release of the default image]",
    ),
    memory_gib: float | None = typer.Option(
        None, "--memory-gib", show_default=False,
        help="With --instance local-cpu: the GiB of RAM the host gives Ollama's models (a stack's local.memoryGib), "
        "judged like VRAM. [default: none, no memory verdict]",
    ),
) -> None:
    """Does one model fit one instance type at this quantization, context and concurrency?"""
    out = Console()
    if not 0 <= headroom < 1:
        fail(f"--headroom {headroom:g}: must be from 0 up to (not including) 1 (a share of VRAM, 0.1 = 10%)", EXIT_CONFIG)
    if memory_gib is not None and not 0 < memory_gib <= MAX_MEMORY_GIB:
        fail(f"--memory-gib {memory_gib:g}: must be more than 0 and at most {MAX_MEMORY_GIB:g} (GiB of RAM)", EXIT_CONFIG)
    given = Path(model).expanduser()
    if given.is_dir():
        fail(f"--model {model}: is a folder, not a GGUF file", EXIT_CONFIG)
    if ("/" in model or model.endswith(".gguf")) and not given.is_file():
        fail(f"--model {model}: no such GGUF file; give a model `name:tag` of `fleet catalog` or the path of a .gguf file", EXIT_CONFIG)
    try:
        group = capacity.single_model_group(model, quant, num_ctx, num_parallel, instance, kv_cache_type, flash_attention)
        memory = None
        if memory_gib is not None:
            if capacity.instance_for(group).gpus:
                fail(f"--memory-gib: only for a CPU instance (local-cpu); {instance} is judged by its GPUs' memory", EXIT_CONFIG)
            memory = int(memory_gib * GIB)
        estimate = capacity.estimate_node(group, headroom, Path.cwd(), ollama_version, host_memory=memory)
    except ValidationError as error:
        fail(_validation_message(error), EXIT_CONFIG)
    except (CapacityError, ValueError) as error:
        fail(str(error), EXIT_CONFIG)
    limits = group_limits(group, headroom, Path.cwd(), ollama_version)
    if json_out:
        typer.echo(json.dumps({**estimate.to_dict(), "limits": _limits_dict(limits)}, indent=2))
    else:
        print_estimate(out, estimate, f"{group.models[0].ref} on {instance}", limits)
    raise typer.Exit(0 if estimate.fits else EXIT_DOES_NOT_FIT)


def _limits_dict(limits: GroupLimits | None) -> dict | None:
    return None if limits is None else limits.to_dict()


def register(target: typer.Typer) -> None:
    """Add `plan` and `fit` to the `fleet` app."""
    target.command("plan")(plan)
    target.command("fit")(fit)


register(app)
