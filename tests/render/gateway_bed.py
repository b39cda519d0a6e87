"""A gateway on the real nginx in front of fake Ollama nodes on 127.0.0.1, for the gateway tests.

The gateway is rendered from the dev stack with test clients, small limits and loopback addresses; each node
is a `FakeOllama` (tests/fake_ollama.py) serving from a thread of its own, which records every request and
names itself in the `X-Fake-Ollama` header of every answer.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from pathlib import Path

import httpx
from fake_ollama import NODE_HEADER, Behavior, FakeOllama
from render_tools import NGINX, make_prefix, nginx_user, require_tool
from waiting import wait_for
from waiting import wait_until as poll

from fleet.config import Client
from fleet.local.processes import free_port
from fleet.render import nginx as ng
from fleet.stack_file import load_stack

KEYS = {"alpha": "alpha-key-0123456789abcdef", "beta": "beta-key-0123456789abcdef"}
ADMIN_KEY = "admin-key-0123456789abcdef"
RETRY_AFTER = 7
MODEL = "smollm2:135m"  # the dev stack's model, served by group `cpu`
MODEL_ALIAS = "chat:latest"  # the dev stack's alias of MODEL
SECOND_MODEL = "tiny-embed:1m"  # served by group `embed` in the routing tests
SECOND_ALIAS = "embeddings"  # its alias (`embeddings:latest`)
WAIT_S = 10  # upper bound of every wait in these tests


def node(name: str, model: str = MODEL) -> FakeOllama:
    """A node serving `model` (its lists name it); its answers stream two tokens."""
    return FakeOllama(Behavior(tokens=("hello", " there")), name=name, loaded=[(model, 1, 1)]).start_thread()


def served_by(response: httpx.Response) -> str:
    """The name of the node that answered."""
    return response.headers[NODE_HEADER]


def gateway_settings(second_group: bool = False):
    base = load_stack("dev").settings
    if second_group:
        # a second group with a model of its own (a GGUF path: nginx never reads it)
        first = base.node_groups[0]
        model = first.models[0].model_copy(
            update={"name": "tiny-embed", "tag": "1m", "gguf": "/models/tiny.gguf", "aliases": [SECOND_ALIAS]}
        )
        second = first.model_copy(update={"name": "embed", "models": [model]})
        base = base.model_copy(update={"node_groups": [first, second]})
    gateway = base.gateway.model_copy(
        update={
            "clients": [Client(name="alpha", per_minute=30), Client(name="beta", tokens_per_day=1000)],
            "rate_limits": base.gateway.rate_limits.model_copy(
                update={"per_key_per_minute": 1_000_000, "per_key_burst": 20, "per_ip_per_minute": 600000, "per_ip_burst": 1000}
            ),
            "queue_per_node": 0,  # max_conns = numParallel (2) x 1 model per node
            "max_body_size": "1k",
            "retry_after_s": RETRY_AFTER,
            "admin_cidrs": ["127.0.0.1/32"],
            "client_cidrs": ["127.0.0.0/8"],
        }
    )
    return base.model_copy(update={"gateway": gateway})


class Gateway:
    def __init__(
        self,
        root: Path,
        upstreams: list[FakeOllama],
        settings=None,
        embed: list[FakeOllama] | None = None,
        tls: bool = True,
        **plan_options,
    ) -> None:
        binary = require_tool(NGINX, "nginx")
        self.settings = settings or gateway_settings(second_group=embed is not None)
        groups = {"cpu": [u.address for u in upstreams]}
        if embed is not None:
            groups["embed"] = [u.address for u in embed]
        paths = make_prefix(root)
        self.https_port, self.http_port, status_port = free_port(), free_port(), free_port()
        self.plan = ng.build_gateway_plan(
            self.settings,
            groups,
            paths=paths,
            tls=tls,
            listen_address="127.0.0.1",
            https_port=self.https_port,
            http_port=self.http_port,
            status_listen=f"127.0.0.1:{status_port}",
            user=nginx_user(),
            worker_processes="2",
            **plan_options,
        )
        (root / "nginx.conf").write_text(ng.render_nginx(self.plan))
        Path(paths.api_keys_include).write_text(ng.render_api_keys(KEYS, ADMIN_KEY))
        self.access_log = Path(paths.access_log)
        self.answered: set[str] = set()  # request ids of the answers its clients had
        self.tls = ssl.create_default_context(cafile=paths.certificate)
        self.process = subprocess.Popen(
            [binary, "-c", str(root / "nginx.conf"), "-p", str(root), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.base = f"https://127.0.0.1:{self.https_port}" if tls else f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                if httpx.get(f"{self.base}/health", verify=self.tls, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {self.process.stderr.read().decode()}")
            time.sleep(0.05)

    def client(self, key: str | None = None, local_address: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        transport = httpx.HTTPTransport(verify=self.tls, local_address=local_address)
        return httpx.Client(base_url=self.base, headers=headers, transport=transport, timeout=WAIT_S,
                            event_hooks={"response": [self._answered]})

    def _answered(self, response: httpx.Response) -> None:
        # Every answer names its request (X-Request-ID, the log's request_id); /health is never logged.
        request_id = response.headers.get("x-request-id")
        if request_id and response.request.url.path != "/health":
            self.answered.add(request_id)

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def log(self) -> list[dict]:
        """The access log once it holds every request this bed's clients had an answer to: nginx writes an entry
        as it finalizes the request, a moment after the client has the answer."""
        def settled() -> tuple[bool, list[dict]]:
            entries = self.entries()
            return self.answered <= {e["request_id"] for e in entries}, entries

        try:
            return poll(settled, "access-log entries of every answered request", WAIT_S)
        except AssertionError:
            return self.entries()  # what is there: the test's own assertion says what is missing

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(WAIT_S)


def error_message(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


def wait_until(condition, what: str) -> None:
    """Poll `condition` (a true value when done) often, up to the bed's WAIT_S."""
    wait_for(condition, what, WAIT_S, interval=0.01)
