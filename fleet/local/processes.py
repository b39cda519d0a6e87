"""Supervise local server processes for the loopback test bed.

Each process runs in its own session (process group), so stopping or killing it also ends the children it
spawned (Ollama's model runners, nginx workers). Output goes to a log file, never to the caller's terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


class ProcessError(RuntimeError):
    """A supervised process failed to start or become ready; the message carries its log tail."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on `host` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """One long-running process started with a clean environment and a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> ManagedProcess:
        if self.is_running():
            raise ProcessError(f"{self.name} is already running (pid {self.popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append, so a restarted process keeps the history of the earlier run in the same file.
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=str(self.cwd) if self.cwd else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _signal_group(self, sig: int) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Ask the process group to exit (SIGTERM); SIGKILL whatever is left after `timeout` seconds."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        # Children (e.g. model runners) may outlive a leader that exited on SIGTERM.
        self._signal_group(signal.SIGKILL)
        return self.popen.returncode

    def kill(self) -> None:
        """Crash the process group at once (SIGKILL), as a failing node would: no graceful shutdown."""
        if self.popen is None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def _check_alive(self, what: str) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise ProcessError(
                f"{self.name} exited with code {self.popen.returncode} while waiting for {what}; "
                f"log {self.log_path}:\n{_tail(self.log_path)}"
            )

    def wait_for_port(self, host: str, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(f"{host}:{port}")
            if port_is_open(host, port):
                return
            time.sleep(0.05)
        raise ProcessError(f"{self.name} did not listen on {host}:{port} within {timeout:.0f}s; "
                           f"log {self.log_path}:\n{_tail(self.log_path)}")

    def wait_for_http(
        self, url: str, timeout: float = 30.0, ok_status: tuple[int, ...] = (200,), auth: tuple[str, str] | None = None
    ) -> httpx.Response:
        """Poll `url` (with basic `auth` when given) until it answers with one of `ok_status`; fail fast if the
        process dies."""
        deadline = time.monotonic() + timeout
        last: str = "no answer"
        while time.monotonic() < deadline:
            self._check_alive(url)
            try:
                resp = httpx.get(url, auth=auth, timeout=2.0)
                if resp.status_code in ok_status:
                    return resp
                last = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.1)
        raise ProcessError(f"{self.name} not ready at {url} within {timeout:.0f}s ({last}); "
                           f"log {self.log_path}:\n{_tail(self.log_path)}")


def clean_env(drop_prefixes: tuple[str, ...] = (), **overrides: str) -> dict[str, str]:
    """The current environment without variables starting with `drop_prefixes`, plus `overrides`.

    Proxies are dropped too: every server here is on loopback, and a proxy must never see test traffic.
    """
    drop = tuple(drop_prefixes) + ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update({k: str(v) for k, v in overrides.items()})
    return env
