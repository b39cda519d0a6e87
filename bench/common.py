"""Shared pieces of the benchmarks: the fake Ollama and nginx as loopback processes, CPU accounting, tables.

Everything listens on 127.0.0.1 and every run is bounded. The gateway is rendered by the same renderer the
deployment uses (fleet.render.nginx); only ports, paths, TLS and the knobs a benchmark names differ.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
FAKE_OLLAMA = REPO / "tests" / "fake_ollama.py"  # the tests' fake, run as a process of its own
for _path in (REPO, FAKE_OLLAMA.parent):  # `python bench/x.py` from the repository root
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from fake_ollama import raise_nofile  # noqa: E402,F401  (re-exported for the benchmarks)

from fleet.config import FleetSettings, Measured  # noqa: E402
from fleet.local.processes import ManagedProcess, clean_env, free_port  # noqa: E402
from fleet.stack_file import load_stack  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
API_KEY = "bench-key-0123456789abcdef"
ADMIN_KEY = "bench-admin-0123456789abcdef"
# The model the benchmarks ask for: the dev stack's, so the gateway routes it to the (only) group. The fake
# Ollama answers any name.
BENCH_MODEL = load_stack("dev", REPO).settings.node_groups[0].models[0].ref
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _group_stat_fields(leader_pid: int) -> Iterator[list[str]]:
    """/proc/<pid>/stat fields after the command name of every live process in `leader_pid`'s process group."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == leader_pid:  # pgrp
            yield fields


def group_cpu_seconds(leader_pid: int) -> float:
    """User + system CPU seconds of every live process in `leader_pid`'s process group (nginx and workers)."""
    return sum(int(f[11]) + int(f[12]) for f in _group_stat_fields(leader_pid)) / CLOCK_TICKS  # utime, stime


def group_rss_bytes(leader_pid: int) -> int:
    """Resident memory of every live process in `leader_pid`'s process group (nginx and workers)."""
    return sum(int(f[21]) for f in _group_stat_fields(leader_pid)) * os.sysconf("SC_PAGE_SIZE")  # rss, pages


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Served:
    """A served process group (`process` leads it) answering at `url`."""

    process: ManagedProcess
    url: str

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.process.pid)

    def rss_bytes(self) -> int:
        return group_rss_bytes(self.process.pid)

    def unrouted_url(self, group: str) -> str:
        """The group's own routes (`/groups/<group>/…`): plain proxying, without the model router."""
        return f"{self.url}/groups/{group}"


@dataclass
class Backend(_Served):
    process: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_fake/stats", timeout=5).json()


@contextlib.contextmanager
def fake_backends(count: int, workdir: Path, *args: str) -> Iterator[list[Backend]]:
    """`count` fake Ollama servers (python tests/fake_ollama.py ARGS), each its own process on a free port."""
    backends = []
    try:
        for i in range(count):
            port = free_port()
            process = ManagedProcess(
                name=f"fake-backend-{i}",
                argv=[sys.executable, str(FAKE_OLLAMA), "--port", str(port), "--nofile", "20000", *args],
                log_path=workdir / f"fake-backend-{i}.log",
                env=clean_env(PYTHONPATH=str(REPO)),
                cwd=REPO,
            )
            process.start()
            process.wait_for_http(f"http://127.0.0.1:{port}/api/version", timeout=30)
            backends.append(Backend(process, port))
        yield backends
    finally:
        for backend in backends:
            backend.process.stop()


def bench_settings(
    *,
    num_parallel: int = 4,
    queue_per_node: int | None = 4,
    ttft_target_s: float | None = None,
    measured: Measured | None = None,
    count: int = 1,
    per_key_per_minute: int = 1_000_000,
    per_key_burst: int = 100_000,
    per_ip_per_minute: int = 1_000_000,
    per_ip_burst: int = 100_000,
    max_connections_per_ip: int = 65_535,
    read_timeout_s: int = 600,
) -> FleetSettings:
    """The dev stack with the knobs a benchmark sets (limits high unless the benchmark is about them)."""
    settings = load_stack("dev", REPO).settings
    group = settings.node_groups[0]
    group = group.model_copy(
        update={"count": count, "measured": measured,
                "ollama": group.ollama.model_copy(update={"num_parallel": num_parallel})}
    )
    gateway = settings.gateway.model_copy(
        update={
            "queue_per_node": queue_per_node,
            "ttft_target_seconds": ttft_target_s,
            "read_timeout_s": read_timeout_s,
            # every generated client shares one loopback address
            "max_connections_per_ip": max_connections_per_ip,
            "rate_limits": settings.gateway.rate_limits.model_copy(
                update={
                    "per_key_per_minute": per_key_per_minute,
                    "per_key_burst": per_key_burst,
                    "per_ip_per_minute": per_ip_per_minute,
                    "per_ip_burst": per_ip_burst,
                }
            ),
        }
    )
    return settings.model_copy(update={"node_groups": [group], "gateway": gateway})


def _nginx_user() -> str | None:
    if os.geteuid() != 0:
        return None
    import grp
    import pwd

    return f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"


def _certificate(cert: Path, key: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )


@dataclass
class Nginx(_Served):
    process: ManagedProcess
    url: str
    status_url: str | None
    conf: Path

    def active_connections(self) -> int | None:
        """`Active connections` from stub_status (client connections, including the status request)."""
        if not self.status_url:
            return None
        text = httpx.get(self.status_url, timeout=5).text
        return int(text.split("Active connections:")[1].split()[0])


def _start_nginx(prefix: Path, conf_text: str, port: int, tls: bool, status_url: str | None) -> Nginx:
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    checked = subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t failed for {conf}:\n{checked.stderr}")
    process = ManagedProcess(
        name="nginx",
        argv=[NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        log_path=prefix / "logs" / "nginx.stdout.log",
        env=clean_env(),
    )
    process.start()
    process.wait_for_port("127.0.0.1", port, timeout=30)
    scheme = "https" if tls else "http"
    return Nginx(process, f"{scheme}://127.0.0.1:{port}", status_url, conf)


@contextlib.contextmanager
def fleet_gateway(
    settings: FleetSettings,
    upstreams: Sequence[str],
    workdir: Path,
    *,
    tls: bool = False,
    worker_connections: int = 4096,
    access_log: bool = True,
) -> Iterator[Nginx]:
    """This project's gateway, rendered by fleet.render.nginx for `settings`, in front of `upstreams`."""
    from fleet.render import nginx as ng

    prefix = workdir / "gateway"
    for folder in ("logs", "temp", "tls"):
        (prefix / folder).mkdir(parents=True, exist_ok=True)
    paths = ng.GatewayPaths.under(str(prefix))
    if not access_log:
        paths = ng.GatewayPaths(**{**vars(paths), "access_log": "/dev/null"})
    if tls:
        _certificate(Path(paths.certificate), Path(paths.certificate_key))
    https_port, http_port, status_port = free_port(), free_port(), free_port()
    plan = ng.build_gateway_plan(
        settings,
        {settings.node_groups[0].name: list(upstreams)},
        paths=paths,
        tls=tls,
        listen_address="127.0.0.1",
        https_port=https_port,
        http_port=http_port,
        status_listen=f"127.0.0.1:{status_port}",
        user=_nginx_user(),
        worker_connections=worker_connections,
    )
    clients = {c.name: API_KEY if i == 0 else f"{API_KEY}-{i}" for i, c in enumerate(settings.gateway.clients)}
    Path(paths.api_keys_include).write_text(ng.render_api_keys(clients, ADMIN_KEY))
    port = https_port if tls else http_port
    gateway = _start_nginx(prefix, ng.render_nginx(plan), port, tls, f"http://127.0.0.1:{status_port}/stub_status")
    try:
        yield gateway
    finally:
        gateway.process.stop()


@contextlib.contextmanager
def seed_gateway(upstreams: Sequence[str], workdir: Path) -> Iterator[Nginx]:
    """The seed's plain nginx config (bench/seed_nginx.conf.j2): per-IP 10 r/m burst 20, no max_conns."""
    import jinja2

    prefix = workdir / "seed"
    for folder in ("logs", "temp"):
        (prefix / folder).mkdir(parents=True, exist_ok=True)
    port = free_port()
    template = jinja2.Template((REPO / "bench" / "seed_nginx.conf.j2").read_text(), undefined=jinja2.StrictUndefined)
    text = template.render(prefix=str(prefix), port=port, upstreams=list(upstreams), api_key=API_KEY, user=_nginx_user())
    gateway = _start_nginx(prefix, text, port, False, None)
    try:
        yield gateway
    finally:
        gateway.process.stop()


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"fleet-bench-{name}-") as folder:
        yield Path(folder)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.1f} ms"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table (readable in docs/benchmarks.md as-is)."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def machine_line() -> str:
    return f"machine: {os.cpu_count()} CPUs, {os.uname().sysname} {os.uname().release}, python {sys.version.split()[0]}"


@dataclass
class Measured:
    """One load level with the CPU each party used meanwhile (seconds of CPU per second of wall time)."""

    summary: object  # fleet.ops.loadtest.LevelSummary
    records: list  # fleet.ops.loadtest.RequestRecord of the level
    generator_cpu: float
    backend_cpu: float | None
    gateway_cpu: float | None


def measure(spec, backends: Sequence[Backend] = (), gateway: Nginx | None = None) -> Measured:
    """Run one level of `spec` (closed or open loop) and account CPU of the generator, backends and nginx."""
    from fleet.ops.loadtest import run_load

    gen0 = self_cpu_seconds()
    back0 = sum(b.cpu_seconds() for b in backends)
    gw0 = gateway.cpu_seconds() if gateway else 0.0
    result = run_load(spec)
    summary = result.levels[0]
    wall = max(summary.wall_s, 1e-9)
    return Measured(
        summary=summary,
        records=result.records[spec.levels[0]],
        generator_cpu=(self_cpu_seconds() - gen0) / wall,
        backend_cpu=(sum(b.cpu_seconds() for b in backends) - back0) / wall if backends else None,
        gateway_cpu=(gateway.cpu_seconds() - gw0) / wall if gateway else None,
    )


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def cpu_per_request(share: float | None, rate: float) -> str:
    """CPU time per request from a CPU share (of one core) and a request rate."""
    if share is None or rate <= 0:
        return "-"
    return f"{1000 * share / rate:.3f} ms"
