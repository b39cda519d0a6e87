"""Helpers of the renderer tests: real tools, test certificates, a small nginx config parser."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleet.render import nginx, prometheus, rules
from fleet.render.nginx import GatewayPaths
from fleet.stack_file import available_stacks

STACKS = available_stacks()
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
SHELLCHECK = shutil.which("shellcheck")


def require_tool(path: str | None, name: str) -> str:
    """The tool's path; a missing tool skips locally but fails in CI (scripts/bootstrap.sh installs it)."""
    if path:
        return path
    message = f"{name} is not installed (scripts/bootstrap.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def nginx_user() -> str | None:
    """`user` directive for a root master (workers must reach the temp folder); None when not root."""
    if os.geteuid() != 0:
        return None
    import grp
    import pwd

    return f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"


def loopback_plan(settings, paths: GatewayPaths | None = None, **overrides) -> nginx.GatewayPlan:
    """The gateway plan of a stack for a test nginx on loopback (placeholder upstreams, unprivileged ports)."""
    return nginx.build_gateway_plan(
        settings,
        nginx.placeholder_upstreams(settings),
        paths=paths,
        listen_address="127.0.0.1",
        https_port=18443,
        http_port=18080,
        status_listen="127.0.0.1:18081",
        user=nginx_user(),
        **overrides,
    )


def make_prefix(root: Path) -> GatewayPaths:
    """A non-root nginx prefix: every path of the plan below `root`, folders created, a test certificate."""
    paths = GatewayPaths.under(str(root))
    for folder in ("logs", "temp", "tls"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    make_certificate(Path(paths.certificate), Path(paths.certificate_key))
    return paths


def make_certificate(cert: Path, key: Path) -> None:
    """A self-signed certificate for localhost/127.0.0.1 made with the openssl CLI."""
    openssl = require_tool(shutil.which("openssl"), "openssl")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )


def nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess:
    binary = require_tool(NGINX, "nginx")
    return subprocess.run([binary, "-t", "-c", str(conf), "-p", str(prefix)], capture_output=True, text=True, timeout=60)


def run_tool(args: list[str], where: str, timeout: float = 120) -> None:
    """Run a checking tool; a failure names `where`, the command and what the tool said."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{where}: {' '.join(args[:3])}: {done.stdout}{done.stderr}"


def check_script(text: str, where: str, folder: Path) -> None:
    """A generated bash script passes `bash -n` and, when installed, `shellcheck -S error`."""
    path = folder / "script.sh"
    path.write_text(text)
    run_tool(["bash", "-n", str(path)], where)
    if SHELLCHECK:
        run_tool([SHELLCHECK, "-s", "bash", "-S", "error", str(path)], where)


def write_gateway_config(settings, folder: Path) -> Path:
    """The stack's gateway config for a loopback nginx whose prefix is folder/nginx, with an API-key include
    holding a key per client; the config's path."""
    paths = make_prefix(folder / "nginx")
    plan = loopback_plan(settings, paths)
    conf = folder / "nginx" / "nginx.conf"
    conf.write_text(nginx.render_nginx(plan))
    keys = {name: f"key-{name}-0123456789abcdef" for name in plan.clients}
    Path(paths.api_keys_include).write_text(nginx.render_api_keys(keys, "admin-key-0123456789abcdef"))
    return conf


def write_prometheus_config(settings, folder: Path, stack: str, **overrides) -> tuple[Path, Path]:
    """The stack's Prometheus config (placeholder targets) and alert rules written in `folder`: their paths."""
    rule_file = folder / "fleet.rules.yml"
    rule_file.write_text(rules.render_rules(settings))
    config = folder / "prometheus.yml"
    config.write_text(
        prometheus.render_prometheus(
            prometheus.build_prometheus_plan(
                settings,
                nodes=prometheus.placeholder_node_targets(settings),
                nginx_exporters=["127.0.0.1:9113"],
                gateway_log_exporters=["127.0.0.1:9115"],
                gateway_node_exporters={"gateway-0": "192.0.2.5:9100"},
                rule_files=[str(rule_file)],
                stack=stack,
                **overrides,
            )
        )
    )
    return config, rule_file


# --- a small parser of nginx configuration, enough to assert on blocks and directives -------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list["Directive"] | None = None
    parent: "Directive | None" = field(default=None, repr=False)

    def find(self, name: str) -> list["Directive"]:
        return [d for d in self.block or [] if d.name == name]

    def walk(self):
        for child in self.block or []:
            yield child
            yield from child.walk()

    def values(self, name: str) -> list[list[str]]:
        return [d.args for d in self.find(name)]


class _Quoted(str):
    """A quoted word: never a brace or a semicolon, whatever it holds."""


def _tokens(text: str):
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{};":
            yield c
            i += 1
        elif c in "'\"":
            j = i + 1
            while text[j] != c:
                j += 2 if text[j] == "\\" else 1
            yield _Quoted(text[i + 1 : j])
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{};":
                j += 1
            yield text[i:j]
            i = j


def parse_nginx(text: str) -> Directive:
    root = Directive("", [], [])
    stack = [root]
    words: list[str] = []
    for token in _tokens(text):
        if isinstance(token, _Quoted):
            words.append(str(token))
        elif token == ";":
            stack[-1].block.append(Directive(words[0], words[1:], parent=stack[-1]))
            words = []
        elif token == "{":
            block = Directive(words[0], words[1:], [], parent=stack[-1])
            stack[-1].block.append(block)
            stack.append(block)
            words = []
        elif token == "}":
            stack.pop()
        else:
            words.append(token)
    assert len(stack) == 1 and not words, "unbalanced nginx config"
    return root
