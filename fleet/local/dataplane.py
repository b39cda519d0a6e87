"""The whole data plane of a stack on 127.0.0.1: real Ollama servers, their metering exporters, the nginx
gateway and Prometheus with its exporters, all started from the renderers the deployment uses.

Only ports and paths differ from a deployment: the Ollama environment, the Modelfile parameters, the
exporter's arguments, nginx.conf, the API-key include, prometheus.yml and the alert rules come from the same
functions that feed the Pulumi components. Every process listens on loopback, runs in its own session (so
stopping it ends its children too) and logs into the run directory.

    with DataPlane("dev", overrides={"gateway.queuePerNode": 1}) as plane:
        httpx.post(f"{plane.gateway_url}/api/chat", headers=plane.auth(plane.client_names[0]), verify=plane.ca_file, ...)

`fleet local up` starts one detached and records it in a state file; `stop_recorded` stops it from that file.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from fleet.exporters.budget import controller_arguments as budget_arguments
from fleet.usage import PASSWORD_ENV as USAGE_PASSWORD_ENV
from fleet.config import FLEET_KEY, FleetSettings, ModelSpec, NodeGroup
from fleet.exporters.gateway_log import exporter_arguments as gateway_log_arguments
from fleet.local import sizing
from fleet.local.ollama import OllamaServer, OllamaSettings, smollm2_gguf
from fleet.local.processes import LOOPBACK, ManagedProcess, clean_env, free_port, port_is_open
from fleet.node_runtime import NodeRuntime
from fleet.render import alertmanager as alertmanager_render
from fleet.render import nginx as nginx_render
from fleet.render import prometheus as prometheus_render
from fleet.render import prometheus_web
from fleet.render.rules import render_rules
from fleet.stack_file import StackConfigError, load_stack, parse_settings

NGINX_BINARY = "/usr/sbin/nginx"
PROMETHEUS_BINARY = "/usr/bin/prometheus"
NODE_EXPORTER_BINARY = "/usr/bin/prometheus-node-exporter"
NGINX_EXPORTER_BINARY = "/usr/bin/prometheus-nginx-exporter"
ALERTMANAGER_BINARY = "/usr/bin/prometheus-alertmanager"
AMTOOL_BINARY = "/usr/bin/amtool"

# Debian package of each tool, named in the error when it is missing (scripts/apt-packages.txt installs them).
DEBIAN_PACKAGES = {
    NGINX_BINARY: "nginx",
    PROMETHEUS_BINARY: "prometheus",
    NODE_EXPORTER_BINARY: "prometheus-node-exporter",
    NGINX_EXPORTER_BINARY: "prometheus-nginx-exporter",
    ALERTMANAGER_BINARY: "prometheus-alertmanager",
    AMTOOL_BINARY: "prometheus-alertmanager",
}

# Models this test bed can serve without a network, by (served name, quantization) -> where the GGUF is.
LOCAL_GGUFS: dict[tuple[str, str], Callable[[], Path]] = {("smollm2:135m", "q4_1"): smollm2_gguf}

STATE_VERSION = 1
START_TIMEOUT_S = 60.0


class DataPlaneError(RuntimeError):
    """The data plane cannot start (a missing tool or model, a port in use); the message says what to do."""


class PortInUseError(DataPlaneError):
    """A port the data plane was asked to listen on is taken; `role` says which one (https, http, prometheus)."""

    def __init__(self, role: str, port: int) -> None:
        super().__init__(f"port {port} on {LOOPBACK} ({role}) is in use")
        self.role = role
        self.port = port


# ---- settings: a stack file plus dotted overrides -----------------------------------------------------


def apply_overrides(fleet: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the `ollama-fleet:fleet` object with `overrides` set.

    Keys are dotted paths as written in the stack file (camelCase), list items by index:
    `gateway.rateLimits.perKeyBurst`, `nodeGroups.0.count`. Missing mappings on the way are created; a list
    index must exist.
    """
    data = copy.deepcopy(dict(fleet))
    for path, value in overrides.items():
        parts = path.split(".")
        if not all(parts):
            raise ValueError(f"override {path!r}: empty path segment")
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ValueError(f"override {path!r}: {where} is not an index of a list of {len(node)}")
                if last:
                    node[int(part)] = copy.deepcopy(value)
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = copy.deepcopy(value)
                else:
                    node = node.setdefault(part, {})
            else:
                raise ValueError(f"override {path!r}: {'.'.join(parts[:depth])} is a value, not a mapping or list")
    return data


def load_settings(stack: str = "dev", overrides: Mapping[str, Any] | None = None) -> FleetSettings:
    """The stack's settings with `overrides` applied and validated like the file itself."""
    config = load_stack(stack)
    if not overrides:
        return config.settings
    source = f"{config.path.name} (with overrides {', '.join(overrides)})"
    try:
        data = apply_overrides(config.raw_config[FLEET_KEY], overrides)
    except ValueError as exc:
        raise StackConfigError(source, [str(exc)]) from None
    return parse_settings(data, source)


def local_gguf(model: ModelSpec) -> Path:
    """The GGUF file a model is imported from on loopback (no network: a file, never a pull)."""
    if model.gguf:
        path = Path(model.gguf).expanduser()
        if not path.is_file():
            raise DataPlaneError(f"model {model.ref}: gguf {model.gguf} is not a file")
        return path.resolve()
    found = LOCAL_GGUFS.get((model.ref, model.quantization))
    if found is None:
        known = ", ".join(f"{name} ({quant})" for name, quant in LOCAL_GGUFS)
        raise DataPlaneError(
            f"model {model.ref} ({model.quantization}) has no local GGUF file; the loopback data plane serves "
            f"{known} or models with a `gguf` path (use the dev stack, or set nodeGroups[].models[].gguf)"
        )
    try:
        return found()
    except FileNotFoundError as exc:
        raise DataPlaneError(str(exc)) from None


def loopback_runtime(runtime: NodeRuntime, ollama_url: str, meter_port: int, metrics_port: int) -> NodeRuntime:
    """The deployment's runtime of a node (`NodeRuntime.of`) with its meter at loopback addresses in place of
    container ones (the Ollama server's own address and models folder are set per server)."""
    meter = runtime.meter.at(ollama_url, f"{LOOPBACK}:{meter_port}", f"{LOOPBACK}:{metrics_port}")
    return replace(runtime, meter=meter)


def _require(binary: str) -> str:
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        found = shutil.which(Path(binary).name)
        if found:
            return found
        raise DataPlaneError(
            f"{binary} is missing: apt-get install {DEBIAN_PACKAGES.get(binary, Path(binary).name)} "
            "(scripts/bootstrap.sh --full installs it)"
        )
    return binary


def _nginx_user() -> str | None:
    """nginx's `user` directive: a master started as root would hand its workers to `nobody`, who cannot
    read a private run directory; anyone else runs the workers as themselves (no directive)."""
    if os.geteuid() != 0:
        return None
    import grp
    import pwd

    return f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"


def make_self_signed(cert: Path, key: Path, days: int = 30) -> None:
    """A self-signed certificate for localhost and 127.0.0.1, made at start with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DataPlaneError("openssl is missing: apt-get install openssl")
    cert.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", "/CN=ollama-fleet local gateway",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise DataPlaneError(f"openssl could not make the gateway certificate: {proc.stderr.strip()}")
    key.chmod(0o600)


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


# ---- processes ---------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot: with the pid, it names one process for ever."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def session_members(session_ids: set[int]) -> list[tuple[int, str]]:
    """Live (non-zombie) processes of the given sessions: (pid, command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if not fields or fields[0] == "Z" or int(fields[3]) not in session_ids:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        found.append((int(entry.name), cmd))
    return found


@dataclass
class LocalNode:
    """One node: an Ollama server and its metering exporter (the gateway's upstream)."""

    name: str  # `<group>-<index>`, the `node` label of its series
    group: NodeGroup
    runtime: NodeRuntime  # its Modelfile parameters and its meter's options, as the deployment has them
    ollama: OllamaServer
    meter: ManagedProcess
    meter_port: int
    metrics_port: int
    models: list[tuple[ModelSpec, Path]] = field(default_factory=list)

    @property
    def upstream(self) -> str:
        return f"{LOOPBACK}:{self.meter_port}"

    @property
    def meter_url(self) -> str:
        return f"http://{self.upstream}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    def processes(self) -> list[ManagedProcess]:
        return [self.ollama.process, self.meter]

    def start(self, warm: bool = True, import_models: bool = False) -> None:
        """Start Ollama, import the models (always with `import_models`, else when missing) and copy them to their
        aliases, warm, start the meter."""
        self.ollama.start(timeout=START_TIMEOUT_S)
        for model, gguf in self.models:
            # The models folder outlives a run and is shared by the nodes: the first node of a start imports again
            # so the Modelfile parameters (num_ctx, num_thread) are this run's; the others find the model there.
            imported = import_models or not self.ollama.has_model(model.ref)
            if imported:
                parameters = dict(self.runtime.served(model.ref).parameters)
                self.ollama.import_gguf(model.ref, gguf, parameters=parameters)
            # Each alias becomes a name of the model, as the deployment's pull step makes it (`ollama cp`).
            for alias in model.aliases:
                if imported or not self.ollama.has_model(alias):
                    self.ollama.copy(model.ref, alias)
        if warm:
            self.warm()
        self.meter.start()
        self.meter.wait_for_http(self.metrics_url, timeout=START_TIMEOUT_S)
        self.meter.wait_for_port(LOOPBACK, self.meter_port, timeout=START_TIMEOUT_S)

    def warm(self) -> None:
        """Load the resident models, as the deployment's warm step does before traffic arrives."""
        for model, _ in self.models:
            if model.keep_loaded:
                self.ollama.load(model.ref, timeout=300)

    def kill(self) -> None:
        """Crash the node: Ollama and its exporter die at once (SIGKILL), as when the host goes away."""
        self.meter.kill()
        self.ollama.kill()

    def restart(self, warm: bool = True) -> None:
        """Bring the node back on the same ports (after `kill` or a stop)."""
        self.stop()
        self.start(warm=warm)

    def stop(self) -> None:
        self.meter.stop()
        self.ollama.stop()

    def is_running(self) -> bool:
        return self.ollama.is_running() and self.meter.is_running()


class DataPlane:
    """A stack's data plane on 127.0.0.1 (context manager). See the module docstring."""

    def __init__(
        self,
        stack: str = "dev",
        overrides: Mapping[str, Any] | None = None,
        *,
        run_dir: Path | str | None = None,
        models_dir: Path | str | None = None,
        ollama_binary: Path | str | None = None,
        scrape_interval: str | None = None,
        monitoring: bool | None = None,
        node_exporter: bool = True,
        nginx_exporter: bool = True,
        gateway_log_exporter: bool = True,
        alertmanager: bool = True,
        alert_receiver_secrets: Mapping[str, str] | None = None,
        https_port: int = 0,
        http_port: int = 0,
        prometheus_port: int = 0,
        warm: bool = True,
        threads_per_node: int | None = None,
        cpus: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """`overrides`: dotted camelCase paths of the stack object (see `apply_overrides`). Ports 0 pick free
        ones. `monitoring` defaults to the stack's `monitoring.enabled`; `scrape_interval` to its
        `monitoring.scrapeInterval` (tests scrape every second). `alert_receiver_secrets` plays the secret config
        `alertReceiverSecrets` for the stack's alert receivers. Each node's model runner gets
        `threads_per_node` CPU threads, else the group's `ollama.numThread`, else an equal share of `cpus`
        (default: the CPUs this process may use; see fleet/local/sizing.py)."""
        self.stack = stack
        self.overrides = dict(overrides or {})
        settings = load_settings(stack, overrides)
        self.thread_plan, per_group = sizing.plan_threads(
            [g.count for g in settings.node_groups],
            [g.ollama.num_thread for g in settings.node_groups],
            cpus or sizing.usable_cpus(),
            threads_per_node,
        )
        threads = {f"nodeGroups.{i}.ollama.numThread": t for i, t in enumerate(per_group)}
        self.settings = load_settings(stack, {**self.overrides, **threads})
        self.run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="fleet-local-"))
        self.run_dir = self.run_dir.resolve()
        self.models_dir = Path(models_dir).resolve() if models_dir else self.run_dir / "models"
        self._ollama_binary = Path(ollama_binary) if ollama_binary else None
        self.scrape_interval = scrape_interval or self.settings.monitoring.scrape_interval
        self.monitoring = self.settings.monitoring.enabled if monitoring is None else monitoring
        self.with_node_exporter = self.monitoring and node_exporter
        self.with_nginx_exporter = self.monitoring and nginx_exporter
        self.with_gateway_log = self.monitoring and gateway_log_exporter
        self.with_alertmanager = self.monitoring and alertmanager
        self.alert_receiver_secrets = dict(alert_receiver_secrets or {})
        self.warm_models = warm
        self.log = log or (lambda message: None)

        self.https_port = https_port or free_port()
        self.http_port = http_port or free_port()
        self.status_port = free_port()
        self.prometheus_port = (prometheus_port or free_port()) if self.monitoring else None
        self.node_exporter_port = free_port() if self.with_node_exporter else None
        self.nginx_exporter_port = free_port() if self.with_nginx_exporter else None
        self.gateway_log_port = free_port() if self.with_gateway_log else None
        self.alertmanager_port = free_port() if self.with_alertmanager else None

        # Keys are generated per start and live only in the run directory (the secret include and the state).
        self.client_keys: dict[str, str] = {c.name: secrets.token_urlsafe(24) for c in self.settings.gateway.clients}
        self.admin_key = secrets.token_urlsafe(24)
        # Prometheus asks for basic auth as on the hosts (same web config renderer); the password is generated
        # per start and kept in the run directory (a 0600 file and the state), never printed by `up`.
        self.prometheus_password = secrets.token_urlsafe(24) if self.monitoring else None

        self.nodes: list[LocalNode] = []
        self.nginx: ManagedProcess | None = None
        self.prometheus: ManagedProcess | None = None
        self.node_exporter: ManagedProcess | None = None
        self.nginx_exporter: ManagedProcess | None = None
        self.gateway_log: ManagedProcess | None = None
        self.alertmanager: ManagedProcess | None = None
        self.budget_controller: ManagedProcess | None = None
        self.gateway_plan: nginx_render.GatewayPlan | None = None
        self.prometheus_plan: prometheus_render.PrometheusPlan | None = None
        self._started: list[ManagedProcess] = []

    # ---- addresses ------------------------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return self.settings.gateway.tls.mode != "off"

    @property
    def gateway_url(self) -> str:
        if self.tls:
            return f"https://{LOOPBACK}:{self.https_port}"
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def prometheus_url(self) -> str | None:
        return f"http://{LOOPBACK}:{self.prometheus_port}" if self.prometheus_port else None

    @property
    def prometheus_auth(self) -> tuple[str, str] | None:
        """(user, password) every client of the loopback Prometheus sends (httpx `auth=`)."""
        return (prometheus_web.PROMETHEUS_USER, self.prometheus_password) if self.prometheus_password else None

    @property
    def prometheus_password_file(self) -> Path:
        return self.run_dir / "prometheus" / "password"

    @property
    def alertmanager_url(self) -> str | None:
        return f"http://{LOOPBACK}:{self.alertmanager_port}" if self.alertmanager_port else None

    @property
    def nginx_dir(self) -> Path:
        return self.run_dir / "nginx"

    @property
    def paths(self) -> nginx_render.GatewayPaths:
        return nginx_render.GatewayPaths.under(str(self.nginx_dir))

    @property
    def ca_file(self) -> Path:
        """The gateway's self-signed certificate: what clients trust (`verify=`)."""
        return Path(self.paths.certificate)

    @property
    def access_log_path(self) -> Path:
        return Path(self.paths.access_log)

    @property
    def gateway_log_url(self) -> str | None:
        """/metrics of the gateway log exporter (None without one)."""
        return f"http://{LOOPBACK}:{self.gateway_log_port}/metrics" if self.gateway_log_port else None

    @property
    def client_names(self) -> list[str]:
        return list(self.client_keys)

    def auth(self, client: str | None = None) -> dict[str, str]:
        """`Authorization: Bearer` header of a client (the first one by default), or of the admin key."""
        key = self.admin_key if client == "admin" else self.client_keys[client or self.client_names[0]]
        return {"Authorization": f"Bearer {key}"}

    def verify(self):
        """What httpx's `verify=` takes to trust this gateway."""
        import ssl

        return ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else True

    def processes(self) -> list[ManagedProcess]:
        return list(self._started)

    # ---- life cycle -----------------------------------------------------------------------------------

    def __enter__(self) -> DataPlane:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> DataPlane:
        binaries = [NGINX_BINARY]
        if self.monitoring:
            binaries.append(PROMETHEUS_BINARY)
        if self.with_node_exporter:
            binaries.append(NODE_EXPORTER_BINARY)
        if self.with_nginx_exporter:
            binaries.append(NGINX_EXPORTER_BINARY)
        if self.with_alertmanager:
            binaries += [ALERTMANAGER_BINARY, AMTOOL_BINARY]
        tools = {b: _require(b) for b in binaries}
        for role, port in (("https", self.https_port), ("http", self.http_port), ("prometheus", self.prometheus_port)):
            if port and port_is_open(LOOPBACK, port):
                raise PortInUseError(role, port)
        models = {
            group.name: [(model, local_gguf(model)) for model in group.models] for group in self.settings.node_groups
        }
        binary = self._ollama_binary or self._build_ollama()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        try:
            self._start_nodes(binary, models)
            self._start_gateway(tools[NGINX_BINARY])
            if self.monitoring:
                self._start_monitoring(tools)
        except BaseException:
            self.stop()
            raise
        return self

    def _build_ollama(self) -> Path:
        from fleet.local.ollama_build import OllamaBuildError, ensure_ollama

        try:
            return ensure_ollama(log=self.log)
        except OllamaBuildError as exc:
            raise DataPlaneError(str(exc)) from None

    def _track(self, process: ManagedProcess) -> ManagedProcess:
        if process not in self._started:
            self._started.append(process)
        return process

    def _start_nodes(self, binary: Path, models: Mapping[str, list[tuple[ModelSpec, Path]]]) -> None:
        clients = [c.name for c in self.settings.gateway.clients]
        for group in self.settings.node_groups:
            for index in range(group.count):
                name = f"{group.name}-{index}"
                deployed = NodeRuntime.of(group, name, clients)
                server = OllamaServer(
                    binary,
                    self.run_dir / "ollama" / name,
                    # one folder per group: a node lists exactly its group's models, as a deployed node does
                    self.models_dir / group.name,
                    settings=OllamaSettings(extra=dict(deployed.environment)),
                    name=f"ollama-{name}",
                )
                meter_port, metrics_port = free_port(), free_port()
                runtime = loopback_runtime(deployed, server.base_url, meter_port, metrics_port)
                meter = ManagedProcess(
                    name=f"meter-{name}",
                    argv=[sys.executable, "-m", "fleet.exporters.meter", *runtime.meter.argv()],
                    log_path=self.run_dir / "logs" / f"meter-{name}.log",
                    env=clean_env(),
                    cwd=self.run_dir,
                )
                node = LocalNode(name, group, runtime, server, meter, meter_port, metrics_port, list(models[group.name]))
                self.nodes.append(node)
                self._track(server.process)
                self._track(meter)
                self.log(f"starting {name}: Ollama on {server.host}, meter on {node.upstream}")
                node.start(warm=self.warm_models, import_models=index == 0)

    def _start_gateway(self, nginx_binary: str) -> None:
        paths = self.paths
        if not Path(paths.njs_module).is_file():
            raise DataPlaneError(
                f"{paths.njs_module} is missing: apt-get install libnginx-mod-http-js (the gateway's model router; "
                "scripts/bootstrap.sh --full installs it)"
            )
        for folder in ("logs", "temp", "tls", "budget"):
            (self.nginx_dir / folder).mkdir(parents=True, exist_ok=True)
        if self.tls:
            make_self_signed(Path(paths.certificate), Path(paths.certificate_key))
        upstreams: dict[str, list[str]] = {}
        for node in self.nodes:
            upstreams.setdefault(node.group.name, []).append(node.upstream)
        self.gateway_plan = nginx_render.build_gateway_plan(
            self.settings,
            upstreams,
            paths=paths,
            tls=self.tls,
            listen_address=LOOPBACK,
            https_port=self.https_port,
            http_port=self.http_port,
            status_listen=f"{LOOPBACK}:{self.status_port}",
            user=_nginx_user(),
        )
        conf = self.nginx_dir / "nginx.conf"
        conf.write_text(nginx_render.render_nginx(self.gateway_plan))
        _write_secret(Path(paths.api_keys_include), nginx_render.render_api_keys(self.client_keys, self.admin_key))
        argv = [nginx_binary, "-p", str(self.nginx_dir), "-c", str(conf), "-e", paths.error_log]
        check = subprocess.run(argv + ["-t", "-q"], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise DataPlaneError(f"nginx refuses the rendered config {conf}: {check.stderr.strip()}")
        self.nginx = self._track(
            ManagedProcess("nginx", argv + ["-g", "daemon off;"], self.run_dir / "logs" / "nginx.log", env=clean_env())
        )
        self.log(f"starting the gateway on {self.gateway_url}")
        self.nginx.start()
        self.nginx.wait_for_http(f"{self.http_url}/health", timeout=START_TIMEOUT_S)

    def _start_monitoring(self, tools: Mapping[str, str]) -> None:
        logs = self.run_dir / "logs"
        if self.with_gateway_log:
            # Beside nginx, following the access-log file the deployment's exporter follows in its volume.
            self.gateway_log = self._track(
                ManagedProcess(
                    "gateway-log-exporter",
                    [sys.executable, "-m", "fleet.exporters.gateway_log"]
                    + gateway_log_arguments(
                        self.paths.access_log_file,
                        f"{LOOPBACK}:{self.gateway_log_port}",
                        "gateway-0",
                        [c.name for c in self.settings.gateway.clients],
                    ),
                    logs / "gateway-log-exporter.log",
                    env=clean_env(),
                    cwd=self.run_dir,
                )
            )
            self.gateway_log.start()
            self.gateway_log.wait_for_http(self.gateway_log_url, timeout=START_TIMEOUT_S)
        if self.with_nginx_exporter:
            self.nginx_exporter = self._track(
                ManagedProcess(
                    "nginx-exporter",
                    [
                        tools[NGINX_EXPORTER_BINARY],
                        f"-nginx.scrape-uri=http://{LOOPBACK}:{self.status_port}/stub_status",
                        f"-web.listen-address={LOOPBACK}:{self.nginx_exporter_port}",
                    ],
                    logs / "nginx-exporter.log",
                    env=clean_env(),
                )
            )
            self.nginx_exporter.start()
            self.nginx_exporter.wait_for_http(f"http://{LOOPBACK}:{self.nginx_exporter_port}/metrics")
        if self.with_node_exporter:
            self.node_exporter = self._track(
                ManagedProcess(
                    "node-exporter",
                    [tools[NODE_EXPORTER_BINARY], f"--web.listen-address={LOOPBACK}:{self.node_exporter_port}"],
                    logs / "node-exporter.log",
                    env=clean_env(),
                )
            )
            self.node_exporter.start()
            self.node_exporter.wait_for_http(f"http://{LOOPBACK}:{self.node_exporter_port}/metrics")

        if self.with_alertmanager:
            self._start_alertmanager(tools)

        prom_dir = self.run_dir / "prometheus"
        rules_file = prom_dir / "rules" / "fleet.rules.yml"
        rules_file.parent.mkdir(parents=True, exist_ok=True)
        rules_file.write_text(render_rules(self.settings))
        # Every node shares this one host: the meters differ by port, and the host has one node exporter.
        targets = [
            prometheus_render.NodeTarget(
                name=node.name,
                group=node.group.name,
                host=LOOPBACK,
                gpu=prometheus_render.is_gpu_group(node.group),
                meter_port=node.metrics_port,
                node_exporter_port=None,
                dcgm_port=None,
            )
            for node in self.nodes
        ]
        self.prometheus_plan = prometheus_render.build_prometheus_plan(
            self.settings,
            nodes=targets,
            nginx_exporters=[f"{LOOPBACK}:{self.nginx_exporter_port}"] if self.nginx_exporter_port else [],
            gateway_log_exporters=[f"{LOOPBACK}:{self.gateway_log_port}"] if self.gateway_log_port else [],
            gateway_node_exporters={"loopback": f"{LOOPBACK}:{self.node_exporter_port}"} if self.node_exporter_port else None,
            prometheus=f"{LOOPBACK}:{self.prometheus_port}",
            rule_files=[str(rules_file)],
            stack=self.stack,
            scrape_interval=self.scrape_interval,
            alertmanagers=[f"{LOOPBACK}:{self.alertmanager_port}"] if self.alertmanager_port else [],
            self_password_file=str(self.prometheus_password_file),
        )
        config = prom_dir / "prometheus.yml"
        config.write_text(prometheus_render.render_prometheus(self.prometheus_plan))
        assert self.prometheus_password is not None
        web_config = prom_dir / "web.yml"
        _write_secret(self.prometheus_password_file, self.prometheus_password)
        salt = secrets.token_hex(prometheus_web.SALT_HEX_CHARS // 2)
        _write_secret(web_config, prometheus_web.render_web_config(prometheus_web.hash_password(self.prometheus_password, salt)))
        args = prometheus_render.prometheus_args(
            self.prometheus_plan,
            config_file=str(config),
            storage_path=str(prom_dir / "data"),
            listen_address=f"{LOOPBACK}:{self.prometheus_port}",
            web_config_file=str(web_config),
        )
        self.prometheus = self._track(
            ManagedProcess("prometheus", [tools[PROMETHEUS_BINARY], *args], logs / "prometheus.log", env=clean_env(), cwd=prom_dir)
        )
        self.log(f"starting Prometheus on {self.prometheus_url}")
        self.prometheus.start()
        self.prometheus.wait_for_http(f"{self.prometheus_url}/-/ready", timeout=START_TIMEOUT_S, auth=self.prometheus_auth)
        if self.budgets:
            self._start_budget_controller()

    @property
    def budgets(self) -> dict[str, int]:
        return {c.name: c.tokens_per_day for c in self.settings.gateway.clients if c.tokens_per_day}

    @property
    def budget_map_file(self) -> Path:
        return Path(self.paths.budget_dir) / "clients.map"

    def _start_budget_controller(self) -> None:
        """The token budget controller beside nginx, reading this plane's Prometheus every second."""
        self.budget_controller = self._track(
            ManagedProcess(
                "budget-controller",
                [sys.executable, "-m", "fleet.exporters.budget"]
                + budget_arguments(
                    self.prometheus_url, self.budgets, str(self.budget_map_file), self.paths.pid, interval_s=1,
                    prometheus_user=prometheus_web.PROMETHEUS_USER,
                ),
                self.run_dir / "logs" / "budget-controller.log",
                # The password travels in the environment, never in the arguments (as on the hosts).
                env=clean_env(**{USAGE_PASSWORD_ENV: self.prometheus_password or ""}),
                cwd=self.run_dir,
            )
        )
        self.log("starting the token budget controller")
        self.budget_controller.start()

    def _start_alertmanager(self, tools: Mapping[str, str]) -> None:
        """Alertmanager with the stack's receivers and routes, checked by amtool first, clustering off."""
        folder = self.run_dir / "alertmanager"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        config = folder / "alertmanager.yml"
        try:
            text = alertmanager_render.render_alertmanager(self.settings, self.alert_receiver_secrets)
        except alertmanager_render.AlertingConfigError as exc:
            raise DataPlaneError(str(exc)) from None
        _write_secret(config, text)
        check = subprocess.run([tools[AMTOOL_BINARY], "check-config", str(config)], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise DataPlaneError(f"amtool refuses the rendered config {config}: {check.stdout.strip()} {check.stderr.strip()}")
        args = alertmanager_render.alertmanager_args(
            config_file=str(config),
            storage_path=str(folder / "data"),
            listen_address=f"{LOOPBACK}:{self.alertmanager_port}",
        )
        self.alertmanager = self._track(
            ManagedProcess("alertmanager", [tools[ALERTMANAGER_BINARY], *args], self.run_dir / "logs" / "alertmanager.log", env=clean_env(), cwd=folder)
        )
        self.log(f"starting Alertmanager on {self.alertmanager_url}")
        self.alertmanager.start()
        self.alertmanager.wait_for_http(f"{self.alertmanager_url}/-/ready", timeout=START_TIMEOUT_S)

    def stop(self) -> None:
        """Stop every process, newest first (the monitoring, the gateway, then the nodes)."""
        for process in reversed(self._started):
            process.stop()

    def leftovers(self) -> list[tuple[int, str]]:
        """Processes still alive in the sessions this data plane started (empty after `stop`)."""
        return session_members({p.pid for p in self._started if p.pid})

    # ---- helpers for tests and the CLI ----------------------------------------------------------------

    def node(self, name_or_index: str | int) -> LocalNode:
        if isinstance(name_or_index, int):
            return self.nodes[name_or_index]
        return next(n for n in self.nodes if n.name == name_or_index)

    def kill(self, node: str | int) -> LocalNode:
        found = self.node(node)
        found.kill()
        return found

    def restart(self, node: str | int, warm: bool = True) -> LocalNode:
        found = self.node(node)
        found.restart(warm=warm)
        return found

    def access_log(self) -> list[dict]:
        """The gateway's JSON access log, one dict per request."""
        try:
            lines = self.access_log_path.read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def prometheus_query(self, expr: str, timeout: float = 10.0) -> dict:
        """`/api/v1/query` (instant query); returns the `data` object or raises with Prometheus' error."""
        resp = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, auth=self.prometheus_auth, timeout=timeout)
        body = resp.json()
        if resp.status_code != 200 or body.get("status") != "success":
            raise DataPlaneError(f"Prometheus refused {expr!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def wait_for_targets(self, timeout: float = 30.0) -> list[dict]:
        """Wait until Prometheus has scraped every target successfully; returns the active targets."""
        deadline = time.monotonic() + timeout
        last: list[dict] = []
        while time.monotonic() < deadline:
            resp = httpx.get(f"{self.prometheus_url}/api/v1/targets", params={"state": "active"}, auth=self.prometheus_auth, timeout=5)
            last = resp.json()["data"]["activeTargets"]
            if last and all(t["health"] == "up" for t in last):
                return last
            time.sleep(0.2)
        down = [f"{t['labels'].get('job')} {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}" for t in last]
        raise DataPlaneError(f"Prometheus targets not all up within {timeout:.0f}s: {down}")

    def state(self) -> dict[str, Any]:
        """What `fleet local down` needs, and what `fleet local up` prints (keys included: a local sandbox)."""
        return {
            "version": STATE_VERSION,
            "stack": self.stack,
            "overrides": self.overrides,
            "run_dir": str(self.run_dir),
            "gateway_url": self.gateway_url,
            "http_url": self.http_url,
            "prometheus_url": self.prometheus_url,
            "prometheus_user": prometheus_web.PROMETHEUS_USER if self.prometheus_password else None,
            "prometheus_password": self.prometheus_password,
            "alertmanager_url": self.alertmanager_url,
            "ca_file": str(self.ca_file) if self.tls else None,
            "client_keys": dict(self.client_keys),
            "admin_key": self.admin_key,
            "threads": self.thread_plan.describe(),
            "nodes": [
                {"name": n.name, "ollama": n.ollama.base_url, "meter": n.meter_url, "metrics": n.metrics_url}
                for n in self.nodes
            ],
            "processes": [
                {"name": p.name, "pid": p.pid, "start_time": process_start_time(p.pid), "argv0": p.argv[0], "log": str(p.log_path)}
                for p in self._started
                if p.pid
            ],
        }


# ---- stopping a detached data plane from its state file -----------------------------------------------


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    """The state file holds the generated keys: readable by its owner only."""
    _write_secret(path, json.dumps(state, indent=2) + "\n")


def read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataPlaneError(f"no local data plane recorded in {path}") from None
    except (OSError, ValueError) as exc:
        raise DataPlaneError(f"{path} is not a data plane state file: {exc}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise DataPlaneError(f"{path} is not a data plane state file of version {STATE_VERSION}")
    return state


def _same_process(entry: Mapping[str, Any]) -> bool:
    """The recorded pid still names the process that was started (not a later one reusing the number)."""
    pid = entry.get("pid")
    fields = _proc_stat(pid) if isinstance(pid, int) else None
    return bool(fields) and fields[0] != "Z" and int(fields[19]) == entry.get("start_time")


def running_recorded(state: Mapping[str, Any]) -> list[dict]:
    """The recorded processes that still run."""
    return [p for p in state.get("processes", []) if _same_process(p)]


def _signal_group(leader: int, sig: signal.Signals) -> bool:
    """Signal the process group `leader` leads; False when it is gone or not ours."""
    try:
        os.killpg(leader, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _wait_while(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_recorded(state: Mapping[str, Any], timeout: float = 15.0) -> list[str]:
    """Stop a detached data plane: SIGTERM to each recorded process group, newest first, SIGKILL to what
    remains after `timeout` seconds. Returns the names of the processes that were still running."""
    alive = [p for p in reversed(state.get("processes", [])) if _same_process(p)]
    stopped = []
    for entry in alive:
        stopped.append(entry["name"])
        # Each process leads its own process group (it was started in a new session).
        if _signal_group(entry["pid"], signal.SIGTERM):
            _wait_while(lambda: _same_process(entry), timeout)
    # Children (model runners, nginx workers) and anything that ignored SIGTERM.
    sessions = {p["pid"] for p in alive}
    for entry in alive:
        _signal_group(entry["pid"], signal.SIGKILL)
    _wait_while(lambda: bool(session_members(sessions)), timeout)
    return stopped
