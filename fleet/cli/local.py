"""`fleet local up|down|status`: the whole data plane of a stack on this machine, without a cloud.

Two engines. `process` (the default): real Ollama servers (built from source, cached), their metering
exporters, the nginx gateway and Prometheus, started on 127.0.0.1 from the renderers the deployment uses
(fleet/local/dataplane.py). `docker`: the stack's planned containers replayed on the project's own Docker
daemon, with stand-in images (fleet/cli/local_docker.py). `up` leaves them running in the background and
records them in a state file; `down` stops them from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console

from fleet.cli.errors import EXIT_CONFIG, EXIT_FAILED
from fleet.cli.errors import fail as _fail
from fleet.stack_file import StackConfigError
from fleet.text import counted

STATE_FILE = "state.json"
DEFAULT_STATE_DIR = ".fleet/local"

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

local_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Run a stack's data plane (Ollama, meters, nginx gateway, Prometheus) on 127.0.0.1.",
)


def _parse_sets(values: list[str]) -> dict[str, Any]:
    """`key.path=value` pairs; values are YAML (`3`, `true`, `[a, b]`, `{name: x}`)."""
    overrides: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} must be key.path=value, e.g. gateway.queuePerNode=1", param_hint="--set")
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise typer.BadParameter(f"{item!r}: the value is not YAML ({exc})", param_hint="--set") from None
    return overrides


PORT_FLAGS = {"https": "--https-port", "http": "--http-port", "prometheus": "--prometheus-port"}


def _down_command(state_dir: Path) -> str:
    from fleet.invocation import fleet_command

    default = Path(DEFAULT_STATE_DIR).resolve()
    where = "" if state_dir.resolve() == default else f" --state-dir {state_dir}"
    return f"{fleet_command()} local down{where}"


def _logs_hint(run_dir: Path) -> str:
    """Where to look after a failed start: only folders that exist and hold a log."""
    found = [p for p in (run_dir / "logs", run_dir / "ollama") if p.is_dir() and any(p.rglob("*.log"))]
    return f"\n(logs in {' and '.join(str(p) for p in found)})" if found else ""


ENGINES = ("process", "docker")
# Options of the process engine; the docker engine runs the stack's containers as planned.
PROCESS_ONLY = {
    "nodes": "--nodes", "threads": "--threads", "sets": "--set", "https_port": "--https-port",
    "http_port": "--http-port", "prometheus_port": "--prometheus-port", "scrape_interval": "--scrape-interval",
    "monitoring": "--monitoring/--no-monitoring", "models_dir": "--models-dir",
}


def _running(state: dict) -> bool:
    from fleet.local import dataplane as dp

    if state.get("engine") == "docker":
        from fleet.cli import local_docker as cli_local_docker

        return bool(cli_local_docker.running(state))
    return bool(dp.running_recorded(state))


@local_app.command("up")
def up(
    ctx: typer.Context,
    stack: str = typer.Option("dev", "--stack", "-s", help="Stack name (Pulumi.<stack>.yaml)."),
    engine: str = typer.Option(
        "process", "--engine",
        help="process: Ollama, the meters, nginx and Prometheus as processes on 127.0.0.1. docker: the stack's "
        "planned containers, created as `pulumi up` would on a Docker host, on the project's own Docker daemon "
        "(stand-in images, ports published on free loopback ports, Grafana left out; needs root).",
    ),
    state_dir: Path = typer.Option(Path(DEFAULT_STATE_DIR), "--state-dir", help="Where the state file, logs and data go."),
    nodes: Optional[int] = typer.Option(
        None, "--nodes", min=1, max=8, show_default=False,
        help="Ollama nodes per node group (2: try failover). [default: the stack's count, at most one per CPU]",
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, max=256, show_default=False,
        help="CPU threads of each node's model runner (Ollama's num_thread). [default: the stack's "
        "ollama.numThread, else the CPUs shared equally over the nodes]",
    ),
    sets: list[str] = typer.Option(
        [], "--set", show_default=False, help="Override a stack setting: camelCase.dotted.path=value (repeatable). [default: none]"
    ),
    https_port: Optional[int] = typer.Option(
        None, "--https-port", show_default=False, help="Gateway HTTPS port; 0: any free port. [default: the stack's gateway.httpsPort]"
    ),
    http_port: Optional[int] = typer.Option(
        None, "--http-port", show_default=False, help="Gateway HTTP port; 0: any free port. [default: the stack's gateway.httpPort]"
    ),
    prometheus_port: int = typer.Option(9090, "--prometheus-port", help="Prometheus port; 0: any free port."),
    scrape_interval: Optional[str] = typer.Option(
        None, "--scrape-interval", show_default=False, help="Prometheus scrape interval. [default: the stack's monitoring.scrapeInterval]"
    ),
    monitoring: Optional[bool] = typer.Option(
        None, "--monitoring/--no-monitoring", show_default=False,
        help="Run Prometheus and the exporters. [default: the stack's monitoring.enabled]",
    ),
    models_dir: Optional[Path] = typer.Option(
        None, "--models-dir", show_default=False, help="Ollama models folder, kept between runs. [default: models/ in the build cache]"
    ),
) -> None:
    """Start the data plane in the background and print its gateway URL, API keys and Prometheus URL."""
    from fleet.local import dataplane as dp
    from fleet.local import sizing
    from fleet.local.ollama_build import cache_root
    from fleet.local.processes import ProcessError
    from fleet.stack_file import load_stack

    if engine not in ENGINES:
        _fail(f"--engine {engine!r}: one of {', '.join(ENGINES)}", EXIT_CONFIG)
    state_dir = state_dir.resolve()
    state_path = state_dir / STATE_FILE
    if state_path.exists():
        try:
            previous = dp.read_state(state_path)
        except dp.DataPlaneError:
            previous = None
        if previous and _running(previous):
            _fail(f"a local data plane is already running (state {state_path}); stop it with: {_down_command(state_dir)}")
    if engine == "docker":
        from fleet.cli import local_docker as cli_local_docker

        given = [flag for name, flag in PROCESS_ONLY.items() if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"]
        if given:
            _fail(f"{', '.join(given)} belong to --engine process; --engine docker runs the stack's containers as "
                  f"planned (change Pulumi.{stack}.yaml instead)", EXIT_CONFIG)
        cli_local_docker.up(stack, state_dir, state_path, _down_command(state_dir), console, err)
        return

    overrides = _parse_sets(sets)
    cpus = sizing.usable_cpus()
    try:
        base = load_stack(stack).settings
        for index, group in enumerate(base.node_groups):
            count = nodes or sizing.default_node_count(group.count, cpus, len(base.node_groups))
            overrides.setdefault(f"nodeGroups.{index}.count", count)
        settings = dp.load_settings(stack, overrides)
    except StackConfigError as error:
        _fail(str(error), EXIT_CONFIG)

    run_dir = state_dir / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    try:
        plane = dp.DataPlane(
            stack,
            overrides,
            run_dir=run_dir,
            models_dir=models_dir or cache_root() / "models",
            scrape_interval=scrape_interval,
            monitoring=monitoring,
            https_port=settings.gateway.https_port if https_port is None else https_port,
            http_port=settings.gateway.http_port if http_port is None else http_port,
            prometheus_port=prometheus_port,
            threads_per_node=threads,
            cpus=cpus,
            log=lambda message: err.print(message),
        )
    except StackConfigError as error:
        _fail(str(error), EXIT_CONFIG)
    err.print(f"threads: {plane.thread_plan.describe()}")
    warning = plane.thread_plan.warning()
    if warning:
        err.print(f"[bold yellow]warning:[/bold yellow] {warning}", markup=True)
    try:
        plane.start()
    except dp.PortInUseError as error:
        _fail(f"{error}: choose another with {PORT_FLAGS[error.role]} N (0: any free port), or stop what holds it"
              f" (a data plane started earlier stops with: {_down_command(state_dir)})")
    except (dp.DataPlaneError, ProcessError) as error:
        _fail(f"{error}{_logs_hint(run_dir)}")
    except KeyboardInterrupt:
        plane.stop()
        raise typer.Exit(130) from None
    dp.write_state(state_path, plane.state())

    console.print(f"gateway      {plane.gateway_url}   (health: {plane.http_url}/health)")
    if plane.tls:
        console.print(f"certificate  {plane.ca_file}   (self-signed: pass it as the CA, e.g. curl --cacert)")
    if plane.prometheus_url:
        console.print(f"prometheus   {plane.prometheus_url}   (basic auth, user {plane.prometheus_auth[0]}: "
                      f"password in {plane.prometheus_password_file}; `fleet local env` exports it)")
    if plane.alertmanager_url:
        console.print(f"alertmanager {plane.alertmanager_url}")
    for node in plane.nodes:
        console.print(f"node         {node.name}: Ollama {node.ollama.base_url}, meter {node.meter_url}")
    console.print(f"threads      {plane.thread_plan.describe()}")
    console.print("API keys, generated for this local sandbox at every `up` (also in the state file, mode 0600):")
    for name, key in plane.client_keys.items():
        console.print(f"  client {name}: {key}")
    console.print(f"  admin: {plane.admin_key}")
    model = settings.node_groups[0].models[0].ref
    cacert = f"--cacert {plane.ca_file} " if plane.tls else ""
    console.print(
        f"try:  curl {cacert}-H 'Authorization: Bearer {plane.client_keys[plane.client_names[0]]}' "
        f"{plane.gateway_url}/api/generate -d '{{\"model\":\"{model}\",\"prompt\":\"Hello\"}}'"
    )
    console.print(f"logs in {run_dir / 'logs'}; stop with: {_down_command(state_dir)}")


@local_app.command("down")
def down(
    state_dir: Path = typer.Option(Path(DEFAULT_STATE_DIR), "--state-dir", help="The folder given to `fleet local up`."),
) -> None:
    """Stop the data plane recorded in the state folder (every process and its children; with the docker
    engine every container, network and volume it created but the models volume)."""
    from fleet.local import dataplane as dp

    state_path = state_dir.resolve() / STATE_FILE
    try:
        state = dp.read_state(state_path)
    except dp.DataPlaneError as error:
        _fail(str(error))
    if state.get("engine") == "docker":
        from fleet.cli import local_docker as cli_local_docker

        cli_local_docker.down(state, console)
        state_path.unlink()
        return
    stopped = dp.stop_recorded(state)
    left = dp.running_recorded(state)
    if left:
        _fail(f"still running after SIGKILL: {', '.join(p['name'] for p in left)}")
    state_path.unlink()
    console.print(f"stopped {counted(len(stopped), 'process', 'processes')}" + (f" ({', '.join(stopped)})" if stopped else "") +
                  f"; logs kept in {state['run_dir']}")


@local_app.command("status")
def status(
    state_dir: Path = typer.Option(Path(DEFAULT_STATE_DIR), "--state-dir", help="The folder given to `fleet local up`."),
) -> None:
    """Show which recorded processes (or containers) still run (exit code 1 when none)."""
    from fleet.local import dataplane as dp

    try:
        state = dp.read_state(state_dir.resolve() / STATE_FILE)
    except dp.DataPlaneError as error:
        _fail(str(error))
    if state.get("engine") == "docker":
        from fleet.cli import local_docker as cli_local_docker

        code = cli_local_docker.status(state, console)
        if code:
            raise typer.Exit(code)
        return
    running = {p["name"] for p in dp.running_recorded(state)}
    for entry in state["processes"]:
        console.print(f"{'running' if entry['name'] in running else 'stopped':8} {entry['name']} (pid {entry['pid']})")
    console.print(f"gateway {state['gateway_url']}" + (f", prometheus {state['prometheus_url']}" if state["prometheus_url"] else ""))
    if not running:
        raise typer.Exit(EXIT_FAILED)


ENV_NAMES = {
    "url": "FLEET_URL", "key": "FLEET_API_KEY", "ca": "FLEET_CA_FILE",
    "prometheus": "FLEET_PROMETHEUS_URL", "prometheus_password": "FLEET_PROMETHEUS_PASSWORD",
}


@local_app.command("env")
def env(
    state_dir: Path = typer.Option(Path(DEFAULT_STATE_DIR), "--state-dir", help="The folder given to `fleet local up`."),
    client: Optional[str] = typer.Option(
        None, "--client", show_default=False, help="Whose API key to export. [default: the stack's first client]"
    ),
) -> None:
    """Print `export` lines for the running data plane: FLEET_URL, FLEET_API_KEY, FLEET_CA_FILE, and with
    monitoring FLEET_PROMETHEUS_URL and FLEET_PROMETHEUS_PASSWORD (Prometheus' basic auth, user fleet).

    Use it as: eval "$(.venv/bin/fleet local env)"; `fleet loadtest` reads FLEET_API_KEY too."""
    import shlex

    from fleet.local import dataplane as dp

    try:
        state = dp.read_state(state_dir.resolve() / STATE_FILE)
    except dp.DataPlaneError as error:
        _fail(f"{error}; start one with: {_up_command()}")
    keys = state["client_keys"]
    name = client or next(iter(keys))
    if name not in keys:
        _fail(f"--client {name!r}: the data plane's clients are {', '.join(keys)}", EXIT_CONFIG)
    values = {ENV_NAMES["url"]: state["gateway_url"], ENV_NAMES["key"]: keys[name]}
    if state.get("ca_file"):
        values[ENV_NAMES["ca"]] = state["ca_file"]
    if state.get("prometheus_password"):
        values[ENV_NAMES["prometheus"]] = state["prometheus_url"]
        values[ENV_NAMES["prometheus_password"]] = state["prometheus_password"]
    for variable, value in values.items():
        typer.echo(f"export {variable}={shlex.quote(value)}")


def _up_command() -> str:
    from fleet.invocation import fleet_command

    return f"{fleet_command()} local up"


def register(app: typer.Typer) -> None:
    """Add the `local` command group to the `fleet` app."""
    app.add_typer(local_app, name="local")
