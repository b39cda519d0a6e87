"""`fleet loadtest` and `fleet tune`: the load generator and the concurrency / NUM_PARALLEL sweep."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleet import capacity
from fleet.ops import loadtest as lt
from fleet.ops import tune as tn
from fleet.cli.errors import EXIT_CONFIG, err, fail, output_folder
from fleet.cli.console import print_table

console = Console()

EXIT_NO_SUCCESS = 1  # loadtest: no request succeeded; tune: no value within bounds
EXIT_USAGE = EXIT_CONFIG  # bad options or stack configuration
EXIT_REFUSED = 3  # tune: the capacity model refuses the value


class RichProgress(lt.ProgressSink):
    """A progress bar per level: requests done (of --requests when set) with ok/error counts."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self._ok = self._errors = 0
        self._label = ""

    def start_level(self, spec: lt.LoadSpec, level: float) -> None:
        if not self.enabled:
            return
        self._ok = self._errors = 0
        unit = "req/s" if spec.mode == "open" else "clients"
        self._label = f"{lt.level_name(level)} {unit}"
        bound = f" ≤{spec.duration_s:g}s" if spec.duration_s else ""
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(f"{self._label}{bound}", total=spec.requests, counts="")

    def advance(self, record: lt.RequestRecord) -> None:
        if self._progress is None:
            return
        if record.ok:
            self._ok += 1
        else:
            self._errors += 1
        self._progress.update(self._task, advance=1, counts=f"ok {self._ok} err {self._errors}")

    def end_level(self, summary: lt.LevelSummary) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=summary.requests, completed=summary.requests)
            self._progress.stop()
            self._progress = None


def _fmt(value: float | None, unit: str = "s", digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}"


def summary_table(result: lt.LoadResult) -> Table:
    spec = result.spec
    table = Table(title=f"{spec.url}{spec.route} ({spec.mode} loop, model {spec.model})", title_justify="left")
    table.add_column("req/s" if spec.mode == "open" else "clients", justify="right", no_wrap=True)
    for name in ("requests", "ok", "err %", "cut", "ok req/s", "tok/s", "TTFT p50", "TTFT p95", "latency p95", "decode p50", "refusals", "CPU busy"):
        table.add_column(name, justify="right", no_wrap=True)
    for s in result.levels:
        table.add_row(
            lt.level_name(s.level),
            str(s.requests),
            str(s.ok),
            f"{100 * s.error_rate:.1f}",
            str(s.cut),
            f"{s.throughput_rps:.1f}",
            f"{s.tokens_per_s:.1f}",
            _fmt(s.ttft_p50_s),
            _fmt(s.ttft_p95_s),
            _fmt(s.latency_p95_s),
            _fmt(s.decode_tps_p50, " tok/s", 1),
            str(s.refusals),
            _share(s.host_cpu_busy),
        )
    return table


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def error_lines(result: lt.LoadResult) -> list[str]:
    """One line per level with failures: each kind (HTTP status, or transport failure and its phase)."""
    unit = "req/s" if result.spec.mode == "open" else "clients"
    lines = []
    for s in result.levels:
        if s.cut:
            lines.append(
                f"cut at {lt.level_name(s.level)} {unit}: {s.cut} of {s.requests} requests were still running "
                f"{result.spec.drain_after_s:g}s after the level's end (--drain); not counted as errors, and the "
                "level's latency figures leave them out"
            )
        if s.error_counts:
            kinds = ", ".join(f"{k} ×{v}" for k, v in s.error_counts.items())
            retry = f"; Retry-After seen {s.retry_after_seen}× ({', '.join(s.retry_after_values)})" if s.retry_after_seen else ""
            lines.append(f"errors at {lt.level_name(s.level)} {unit}: {kinds}{retry}")
    return lines


def _verify(insecure: bool, ca_cert: Optional[Path]) -> bool | str:
    if ca_cert is not None:
        return str(ca_cert)
    return not insecure


def _build_spec(
    url: str, api: str, model: str, prompt: str, max_tokens: int, concurrency: str, rate: Optional[str],
    requests: Optional[int], duration: Optional[float], timeout: float, read_timeout: float, api_key: Optional[str],
    insecure: bool, ca_cert: Optional[Path], source_ips: Optional[list[str]] = None, drain: Optional[float] = None,
) -> lt.LoadSpec:
    levels = lt.parse_levels(concurrency, int, "--concurrency")
    rates = lt.parse_levels(rate, float, "--rate") if rate else ()
    return lt.LoadSpec(
        url=url,
        api=api,  # type: ignore[arg-type]
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        concurrency=levels,
        rate=rates,
        requests=requests,
        duration_s=duration,
        timeout_s=timeout,
        read_timeout_s=min(read_timeout, timeout),
        api_key=api_key,
        verify_tls=_verify(insecure, ca_cert),
        source_addresses=tuple(source_ips or ()),
        drain_s=drain,
    ).validate()


# Options shared by both commands.
API_HELP = "ollama: /api/generate; chat: /api/chat; openai: /v1/chat/completions (streamed, SSE)."
KEY_HELP = "API key, sent as `Authorization: Bearer <key>` (or set FLEET_API_KEY). [default: none, no key sent]"
PROMPT_HELP = "Prompt of every request."
CA_HELP = "CA bundle to verify the gateway's certificate with (a self-signed gateway's certificate). [default: the system's CAs]"
REQUESTS_HELP = "Requests per level. [default: no count; --duration bounds the level]"
DURATION_HELP = "Seconds per level: no request starts after it. [default: no time bound; --requests bounds the level]"
DRAIN_HELP = (
    "Seconds requests still in flight at a level's end may run on; then they are cut and reported as cut. "
    "[default: the level's --duration]"
)


def loadtest(
    url: str = typer.Argument(..., help="Base URL of an Ollama-compatible endpoint, e.g. https://127.0.0.1:8443 or http://127.0.0.1:11434."),
    api: str = typer.Option("ollama", "--api", help=API_HELP),
    model: str = typer.Option("smollm2:135m", "--model", "-m", help="Model name as the server knows it."),
    prompt: str = typer.Option("Why is the sky blue? Answer in one sentence.", "--prompt", help=PROMPT_HELP),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Output cap per request (num_predict / max_tokens)."),
    concurrency: str = typer.Option("1,2,4,8", "--concurrency", "-c", help="Closed-loop levels: clients sending back to back."),
    rate: Optional[str] = typer.Option(None, "--rate", "-r", show_default=False, help="Open-loop levels in requests/s (e.g. 5,10,20); replaces --concurrency. [default: none, closed loop]"),
    requests: Optional[int] = typer.Option(None, "--requests", "-n", show_default=False, help=REQUESTS_HELP),
    duration: Optional[float] = typer.Option(None, "--duration", "-d", show_default=False, help=DURATION_HELP),
    drain: Optional[float] = typer.Option(None, "--drain", show_default=False, help=DRAIN_HELP),
    timeout: float = typer.Option(120.0, "--timeout", help="Whole-request timeout, seconds."),
    read_timeout: float = typer.Option(60.0, "--read-timeout", help="Longest silence between streamed chunks, seconds."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="FLEET_API_KEY", help=KEY_HELP, show_default=False),
    insecure: bool = typer.Option(False, "--insecure", "-k", help="Do not verify the TLS certificate (self-signed gateway)."),
    ca_cert: Optional[Path] = typer.Option(None, "--ca-cert", show_default=False, help=CA_HELP),
    source_ip: Optional[list[str]] = typer.Option(None, "--source-ip", show_default=False, metavar="ADDRESS", help="Local address to send from; repeat to spread clients over several (per-IP limits). [default: the system's choice]"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", show_default=False, help="Write results.json, summary.csv, requests-*.csv and plot.png here. [default: print only]"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar per level."),
) -> None:
    """Load an Ollama-compatible endpoint: TTFT, tokens/s, latency and errors per concurrency level or rate."""
    try:
        spec = _build_spec(url, api, model, prompt, max_tokens, concurrency, rate, requests, duration, timeout,
                           read_timeout, api_key, insecure, ca_cert, source_ip, drain)
    except lt.LoadSpecError as exc:
        fail(str(exc), EXIT_USAGE)
    if out is not None:
        output_folder(out)
    result = lt.run_load(spec, RichProgress(console, enabled=progress))
    print_table(console, summary_table(result))
    for line in error_lines(result):
        console.print(line, highlight=False, soft_wrap=True)
    if out is not None:
        written = lt.write_results(result, out)
        console.print(f"results written to {out}/ ({', '.join(p.name for p in written)})")
    if not any(s.ok for s in result.levels):
        err.print("[bold red]no request succeeded[/bold red]")
        raise typer.Exit(EXIT_NO_SUCCESS)


def _sweep_table(points: list[tn.Point], knee: tn.Knee, bounds: tn.Bounds, param: str, refused: dict[int, str]) -> Table:
    table = Table(title=f"sweep over {param} (bounds: {bounds.describe()})", title_justify="left")
    for name in (param, "clients", "ok req/s", "tok/s", "TTFT p50", "TTFT p95", "latency p95", "decode p50", "err %", "CPU busy"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("verdict", justify="left", overflow="fold", min_width=24)
    chosen = knee.point.value if knee.point else None
    for p in points:
        s = p.summary
        reasons = knee.reasons.get(p.value)
        verdict = "[bold green]knee[/]" if p.value == chosen else ("; ".join(reasons) if reasons else "within bounds")
        table.add_row(
            str(p.value), lt.level_name(s.level), f"{s.throughput_rps:.1f}", f"{s.tokens_per_s:.1f}",
            _fmt(s.ttft_p50_s), _fmt(s.ttft_p95_s), _fmt(s.latency_p95_s, digits=1),
            _fmt(s.decode_tps_p50, " tok/s", 1), f"{100 * s.error_rate:.1f}", _share(s.host_cpu_busy), verdict,
        )
    for value, reason in sorted(refused.items()):
        table.add_row(str(value), "-", "-", "-", "-", "-", "-", "-", "-", "-", f"[red]refused (capacity)[/]: {reason}")
    return table


@contextlib.contextmanager
def _local_ollama_sweep(work: Path):
    """Restart a loopback Ollama (fleet.local) per numParallel value; yields apply(value) -> URL and the model name."""
    from fleet.local.ollama import TEST_MODEL_NAME, OllamaServer, OllamaSettings, smollm2_gguf
    from fleet.local.ollama_build import ensure_ollama

    binary = ensure_ollama(log=lambda line: err.print(line, highlight=False))
    models = work / "models"
    current: list[OllamaServer] = []

    def apply(value: int) -> str:
        for server in current:
            server.stop()
        current.clear()
        server = OllamaServer(binary, work / f"ollama-np{value}", models,
                              settings=OllamaSettings(num_parallel=value, keep_alive="30m"), name=f"tune-np{value}")
        current.append(server)
        server.start()
        server.ensure_model(TEST_MODEL_NAME, smollm2_gguf())
        return server.base_url

    # A terminated sweep must not leave Ollama servers behind (they run in their own sessions).
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield apply, TEST_MODEL_NAME
    finally:
        for server in current:
            server.stop()
        signal.signal(signal.SIGTERM, previous)


def tune(
    stack: str = typer.Option(..., "--stack", "-s", help="Stack whose config the recommendation is for (Pulumi.<stack>.yaml)."),
    group: str = typer.Option(..., "--group", "-g", help="Node group to tune."),
    url: Optional[str] = typer.Option(None, "--url", show_default=False, help="Endpoint to load (the gateway or a node); not used with --local or --from-results. [default: none]"),
    param: str = typer.Option("concurrency", "--param", help="concurrency (client load, sets gateway admission) or num_parallel (OLLAMA_NUM_PARALLEL)."),
    values: Optional[str] = typer.Option(None, "--values", show_default=False, help="Values to sweep, e.g. 1,2,4,8. [default: 1,2,4,8,16,32 for concurrency, 1,2,4,8,16 for num_parallel]"),
    max_p95_ttft: float = typer.Option(tn.Bounds.max_p95_ttft_s, "--max-p95-ttft", help="Bound on p95 time to first token, seconds."),
    max_p95_latency: float = typer.Option(tn.Bounds.max_p95_latency_s, "--max-p95-latency", help="Bound on p95 whole-request latency, seconds (0: no bound)."),
    min_decode: float = typer.Option(tn.Bounds.min_decode_tps, "--min-decode", help="Bound on the median decode speed of one answer, tokens/s (0: no bound)."),
    max_error_rate: float = typer.Option(tn.Bounds.max_error_rate, "--max-error-rate", help="Bound on the error rate (0.01 = 1%)."),
    metric: str = typer.Option("tokens", "--metric", help="Throughput to maximise: tokens (tokens/s) or requests (req/s)."),
    tolerance: float = typer.Option(0.05, "--tolerance", help="On a plateau, the smallest value within this share of the best wins."),
    restart_cmd: Optional[str] = typer.Option(None, "--restart-cmd", show_default=False, help="num_parallel: shell command restarting the server(s) with {value}, e.g. \"ssh node 'OLLAMA_NUM_PARALLEL={value} systemctl restart ollama'\". [default: none]"),
    local: bool = typer.Option(False, "--local", help="num_parallel: sweep a loopback Ollama (fleet.local) restarted per value, with the test model."),
    clients: Optional[int] = typer.Option(None, "--clients", show_default=False, help="num_parallel: concurrent clients per value. [default: value × nodes × resident models]"),
    from_results: Optional[Path] = typer.Option(None, "--from-results", show_default=False, help="Pick the knee from a `fleet loadtest --out` folder instead of loading. [default: none, load now]"),
    api: str = typer.Option("ollama", "--api", help=API_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m", show_default=False, help="Model to load. [default: the group's first model]"),
    prompt: str = typer.Option("Why is the sky blue? Answer in one sentence.", "--prompt", help=PROMPT_HELP),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Output cap per request (num_predict / max_tokens)."),
    requests: Optional[int] = typer.Option(None, "--requests", "-n", show_default=False, help=REQUESTS_HELP),
    duration: Optional[float] = typer.Option(None, "--duration", "-d", show_default=False, help=DURATION_HELP),
    drain: Optional[float] = typer.Option(None, "--drain", show_default=False, help=DRAIN_HELP),
    timeout: float = typer.Option(120.0, "--timeout", help="Whole-request timeout, seconds."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="FLEET_API_KEY", help=KEY_HELP, show_default=False),
    insecure: bool = typer.Option(False, "--insecure", "-k", help="Do not verify the TLS certificate (self-signed gateway)."),
    ca_cert: Optional[Path] = typer.Option(None, "--ca-cert", show_default=False, help=CA_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", show_default=False, help="Write the sweep (results, plot) and tune.json here. [default: print only]"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar per value."),
) -> None:
    """Sweep concurrency or NUM_PARALLEL, pick the knee, and print the stack config change to make."""
    from fleet.stack_file import StackConfigError, load_stack

    try:
        stack_config = load_stack(stack)
    except StackConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    settings = stack_config.settings
    if param not in tn.DEFAULT_VALUES:
        fail(f"--param {param!r}: allowed: {', '.join(tn.DEFAULT_VALUES)}", EXIT_USAGE)
    if metric not in ("tokens", "requests"):
        fail(f"--metric {metric!r}: allowed: tokens, requests", EXIT_USAGE)
    try:
        index, node_group = tn.find_group(settings, group, stack_config.path.name)
        version = tn.stack_ollama_version(settings, stack_config.path.name)
        swept = lt.parse_levels(values, int, "--values") if values else tn.DEFAULT_VALUES[param]
        if any(not 1 <= v <= lt.MAX_CONCURRENCY for v in swept):
            raise lt.LoadSpecError(f"--values {values}: every value must be from 1 to {lt.MAX_CONCURRENCY}")
        _check_bounds(max_p95_ttft, max_p95_latency, min_decode, max_error_rate, tolerance, clients)
    except (tn.TuneError, lt.LoadSpecError) as exc:
        fail(str(exc), EXIT_USAGE)
    bounds = tn.Bounds(
        max_p95_ttft_s=max_p95_ttft,
        max_error_rate=max_error_rate,
        max_p95_latency_s=max_p95_latency or None,
        min_decode_tps=min_decode or None,
    )
    headroom = settings.policy.vram_headroom

    refused: dict[int, str] = {}
    if param == "num_parallel":
        swept_list, refused = tn.split_fitting(node_group, swept, headroom, version)
        for value, reason in sorted(refused.items()):
            err.print(f"[yellow]refused:[/yellow] {reason}", highlight=False, soft_wrap=True)
        if not swept_list:
            fail(f"no value of --values fits group {group!r}; nothing to sweep", EXIT_REFUSED)
        swept = tuple(swept_list)

    if out is not None:
        output_folder(out)
    sink = RichProgress(console, enabled=progress)
    points: list[tn.Point]
    sweep: lt.LoadResult | None = None
    measured_url = url or "http://127.0.0.1"  # --local loads a loopback Ollama
    if from_results is not None:
        points, measured_url = _points_from_results(from_results, param, swept)
    else:
        if local and param != "num_parallel":
            fail("--local restarts a loopback Ollama per numParallel value: use it with --param num_parallel", EXIT_USAGE)
        if param == "num_parallel" and not (restart_cmd or local):
            fail("--param num_parallel restarts the server per value: give --restart-cmd '... {value} ...' or --local", EXIT_USAGE)
        if not local and not url:
            fail("--url is required (or --local / --from-results)", EXIT_USAGE)
        try:
            spec = lt.LoadSpec(
                url=url or "http://127.0.0.1:0", api=api, model=model or node_group.models[0].ref, prompt=prompt,  # type: ignore[arg-type]
                max_tokens=max_tokens, requests=requests, duration_s=duration, timeout_s=timeout,
                read_timeout_s=timeout, api_key=api_key, verify_tls=_verify(insecure, ca_cert), drain_s=drain,
            ).validate()
            if param == "concurrency":
                points, sweep = tn.sweep_concurrency(spec, swept, sink)
            else:
                clients_for = (lambda v: clients) if clients else (
                    lambda v: capacity.slots_per_group(capacity.with_num_parallel(node_group, v)))
                if local:
                    with tempfile.TemporaryDirectory(prefix="fleet-tune-") as work, _local_ollama_sweep(Path(work)) as (apply, local_model):
                        spec = lt.LoadSpec(**{**tn._spec_fields(spec), "model": model or local_model})
                        points = tn.sweep_num_parallel(spec, swept, apply, clients_for, sink)
                else:
                    def apply(value: int) -> None:
                        console.print(f"restarting with numParallel {value}")
                        tn.restart_with_command(restart_cmd, value)
                        tn.wait_ready(spec.url, api_key=api_key, verify=spec.verify_tls)
                        return None

                    points = tn.sweep_num_parallel(spec, swept, apply, clients_for, sink)
                sweep = tn.sweep_result(spec, points)
        except (lt.LoadSpecError, tn.TuneError) as exc:
            fail(str(exc), EXIT_USAGE)
        except (OSError, RuntimeError) as exc:  # fleet.local: no Ollama build, no test model, a server that died
            fail(f"the loopback Ollama could not run: {exc}", EXIT_NO_SUCCESS)

    knee = tn.pick_knee(points, bounds, metric=metric, tolerance=tolerance)  # type: ignore[arg-type]
    print_table(console, _sweep_table(points, knee, bounds, param, refused))
    contention = tn.shared_cpu(measured_url, points, param)
    if contention:
        err.print(f"[bold yellow]note:[/bold yellow] {contention}", highlight=False, soft_wrap=True)
    try:
        measured = tn.measure_service(points, node_group) if param == "concurrency" else None
        rec = tn.recommend(param, knee.point.value if knee.point else None, settings, index, refused,  # type: ignore[arg-type]
                           contention, measured=measured)
    except tn.TuneError as exc:
        fail(str(exc), EXIT_REFUSED, label="refused")
    if out is not None:
        if sweep is not None:
            lt.write_results(sweep, out, x_label="OLLAMA_NUM_PARALLEL" if param == "num_parallel" else None)
        _write_tune(out, stack, group, param, bounds, points, knee, rec)
    if knee.point is None:
        err.print(f"[bold red]no value of {param} stays within the bounds[/bold red]; nothing to recommend")
        raise typer.Exit(EXIT_NO_SUCCESS)
    console.print(f"knee: {param} = {knee.point.value}")
    for note in rec.notes:
        console.print(f"  {note}", highlight=False)
    if rec.changes:
        console.print(f"change in {stack_config.path.name}:")
        for change in rec.changes:
            console.print(f"  {change.key_path}: {change.current} → [bold]{change.value}[/bold]", highlight=False)
            console.print(f"  ({change.command(stack)})", highlight=False, soft_wrap=True)


def _check_bounds(max_p95_ttft: float, max_p95_latency: float, min_decode: float, max_error_rate: float,
                  tolerance: float, clients: Optional[int]) -> None:
    """tune's bounds as numbers a sweep can be judged by (NaN compares false with everything)."""
    checks = (
        ("--max-p95-ttft", max_p95_ttft, 0 < max_p95_ttft <= lt.MAX_SECONDS, f"more than 0 and at most {lt.MAX_SECONDS:g} seconds"),
        ("--max-p95-latency", max_p95_latency, 0 <= max_p95_latency <= lt.MAX_SECONDS, f"from 0 (no bound) to {lt.MAX_SECONDS:g} seconds"),
        ("--min-decode", min_decode, 0 <= min_decode <= 1e6, "from 0 (no bound) to 1000000 tokens/s"),
        ("--max-error-rate", max_error_rate, 0 <= max_error_rate <= 1, "from 0 to 1 (0.01 = 1%)"),
        ("--tolerance", tolerance, 0 <= tolerance < 1, "from 0 up to (not including) 1"),
    )
    for option, value, ok, allowed in checks:
        if not ok:
            raise lt.LoadSpecError(f"{option} {value:g}: must be {allowed}")
    if clients is not None and not 1 <= clients <= lt.MAX_CONCURRENCY:
        raise lt.LoadSpecError(f"--clients {clients}: must be from 1 to {lt.MAX_CONCURRENCY}")


def _points_from_results(folder: Path, param: str, wanted: tuple[int, ...]) -> tuple[list[tn.Point], str]:
    """The levels of a `fleet loadtest --out` folder, and the URL they were measured against."""
    path = folder / "results.json" if folder.is_dir() else folder
    try:
        data = json.loads(path.read_text())
        summaries = [lt.LevelSummary(**level) for level in data["levels"]]
        url = str(data["spec"]["url"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"--from-results {path}: not a `fleet loadtest` results.json ({exc})", EXIT_USAGE)
    if param != "concurrency":
        fail("--from-results holds a concurrency sweep: use it with --param concurrency", EXIT_USAGE)
    return [tn.Point(int(s.level), s) for s in summaries], url


def _write_tune(out: Path, stack: str, group: str, param: str, bounds: tn.Bounds, points, knee: tn.Knee, rec) -> None:
    from dataclasses import asdict

    out.mkdir(parents=True, exist_ok=True)
    data = {
        "stack": stack,
        "group": group,
        "param": param,
        "bounds": asdict(bounds),
        "points": [{"value": p.value, **asdict(p.summary)} for p in points],
        "knee": knee.point.value if knee.point else None,
        "out_of_bounds": {str(k): v for k, v in knee.reasons.items()},
        "refused": {str(k): v for k, v in rec.refused.items()},
        "changes": [{"keyPath": c.key_path, "current": c.current, "value": c.value} for c in rec.changes],
        "notes": rec.notes,
    }
    (out / "tune.json").write_text(json.dumps(data, indent=2) + "\n")
    console.print(f"sweep written to {out / 'tune.json'}")


def register(app: typer.Typer) -> None:
    """Add `loadtest` and `tune` to the `fleet` app."""
    app.command("loadtest")(loadtest)
    app.command("tune")(tune)
