"""A Docker daemon of the project's own: Debian's dockerd on a socket and data root of its own.

The replay of the planned containers (`fleet.local.docker_replay`) and its tests run against it, never
against a daemon the machine may already have. Its data root lives in the build cache, so the stand-in
images survive between runs on one machine; the default bridge is off (the replay creates the stack's own
networks), so it never collides with another daemon's docker0. Overlay2 where the kernel allows it, vfs
otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet.local.ollama_build import cache_root
RUN_DIR = Path("/run/ollama-fleet-docker")  # short: a unix socket path has a 108-byte limit
STORAGE_DRIVERS = ("overlay2", "vfs")
START_TIMEOUT_S = 60


class DockerdError(RuntimeError):
    pass


@dataclass
class Dockerd:
    data_root: Path = field(default_factory=lambda: cache_root() / "docker" / "data")
    run_dir: Path = RUN_DIR
    storage_driver: str | None = None  # the one it started with
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.data_root.parent / "dockerd.log"

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.url, timeout=300)

    def is_up(self) -> bool:
        import docker

        if not self.socket.exists():
            return False
        try:
            return bool(docker.DockerClient(base_url=self.url, timeout=5).ping())
        except Exception:  # noqa: BLE001 (any failure to answer means not up)
            return False

    def start(self) -> Dockerd:
        """Start the daemon (first storage driver that works), or fail with its log's last lines."""
        binary = shutil.which("dockerd") or ("/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None)
        if binary is None:
            raise DockerdError("dockerd is missing: apt-get install docker.io (scripts/bootstrap.sh --full does)")
        if os.geteuid() != 0:
            raise DockerdError("dockerd needs root: run as root")
        if self.is_up():
            raise DockerdError(f"a Docker daemon already answers on {self.socket}: stop it first (fleet local down)")
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        failures = []
        for driver in STORAGE_DRIVERS:
            if self._start_with(binary, driver):
                self.storage_driver = driver
                return self
            failures.append(f"{driver}: {self._log_tail()}")
        raise DockerdError("dockerd did not start:\n" + "\n".join(failures))

    def _start_with(self, binary: str, driver: str) -> bool:
        log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--data-root={self.data_root}",
                f"--exec-root={self.run_dir / 'exec'}",
                f"--pidfile={self.run_dir / 'dockerd.pid'}",
                f"--host={self.url}",
                f"--storage-driver={driver}",
                "--bridge=none",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.is_up():
                return True
            time.sleep(0.5)
        self._terminate()
        return False

    def _log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the daemon this object started (its containers stop with it; images and volumes stay)."""
        self._terminate()
        self.process = None

    def stop_running(self) -> bool:
        """Stop the daemon that another process started on this run dir (its pid file); False if none."""
        pid_file = self.run_dir / "dockerd.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return False
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return False
        if comm != "dockerd":
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.5)
        return True
