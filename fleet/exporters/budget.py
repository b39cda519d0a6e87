"""Token budget controller: clients over their `tokensPerDay` are refused by the gateway until 00:00 UTC.

Mechanism (one controller beside each gateway's nginx):

1. every `--interval` seconds, ask Prometheus for each client's tokens since 00:00 UTC
   (`ollama_inference_tokens_total` counted since midnight by `fleet.usage.counted_since`, summed over every node and model,
   so all nodes count towards one budget whichever gateway the requests came through);
2. write the clients at or over their budget as an nginx `map` include (`"team-a" "<HTTP date of the next
   00:00 UTC>";`) into the gateway's budget folder, atomically (a temporary file renamed over the old one);
3. only when that content changed, SIGHUP nginx (`nginx -s reload`): new workers read the map, old ones finish
   their requests and streams, so no connection is dropped. The HTTP date only changes at midnight, so
   reloads happen when a client crosses its budget or a day starts.

nginx answers a listed client's inference requests 429 with a JSON body naming the budget and `Retry-After`
set to that date (templates/nginx.conf.j2). Restarts: the file lives in a volume, so a restarted nginx
enforces the last decision at once; a restarted controller recomputes from Prometheus, whose counts survive
in its TSDB (and a series reset by a node restart is counted with `increase()`). While Prometheus
cannot be reached the last decision stays in force. Tokens are counted when a request finishes, so a
client can overshoot by what its requests in flight at that moment use.

    python -m fleet.exporters.budget --prometheus-url http://prometheus:9090 --budget team-a=100000 \\
        --map-file /var/lib/nginx-fleet/budget/clients.map --nginx-pid-file /var/lib/nginx-fleet/budget/nginx.pid

Only the standard library is needed (it runs from the exporter image).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

from fleet.usage import PASSWORD_ENV, TOKENS_METRIC, PrometheusApi, UsageError, counted_since

log = logging.getLogger("fleet.exporters.budget")

_CLIENT = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")
HEADER = "# Clients over their token budget, written by fleet.exporters.budget. Do not edit by hand.\n"


@dataclass(frozen=True)
class Decision:
    blocked: dict[str, str]  # client -> HTTP date its window frees up
    usage: dict[str, float]  # client -> tokens used in the window


def window_start(now: datetime) -> datetime:
    return now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def next_reset(now: datetime) -> datetime:
    return window_start(now) + timedelta(days=1)


def usage_query(now: datetime) -> str:
    """Tokens per client since 00:00 UTC (at least one second, so the range is valid right after midnight)."""
    seconds = max(1, int((now - window_start(now)).total_seconds()))
    return counted_since(TOKENS_METRIC, f"{seconds}s", "client")


def decide(usage: Mapping[str, float], budgets: Mapping[str, int], now: datetime) -> Decision:
    reset = format_datetime(next_reset(now), usegmt=True)
    blocked = {client: reset for client, limit in budgets.items() if usage.get(client, 0.0) >= limit}
    return Decision(blocked=blocked, usage={c: usage.get(c, 0.0) for c in budgets})


def render_map(decision: Decision) -> str:
    """The `map $fleet_client $fleet_budget_reset` entries nginx includes."""
    lines = [f'"{client}" "{date}";' for client, date in sorted(decision.blocked.items())]
    return HEADER + "".join(line + "\n" for line in lines)


def write_if_changed(path: Path, text: str) -> bool:
    """Replace `path` atomically with `text` unless it already holds it; True when it was written."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".budget-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # nginx's workers read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def reload_nginx(pid_file: Path) -> bool:
    """SIGHUP to nginx's master (what `nginx -s reload` does): a graceful reload."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        log.warning("could not reload nginx from %s: %s", pid_file, exc)
        return False
    return True


class BudgetController:
    def __init__(self, api: PrometheusApi, budgets: Mapping[str, int], map_file: Path, pid_file: Path) -> None:
        self.api, self.budgets, self.map_file, self.pid_file = api, dict(budgets), map_file, pid_file

    def run_once(self, now: datetime | None = None) -> Decision | None:
        """One round; None when Prometheus could not answer (the last decision stays in force)."""
        now = now or datetime.now(timezone.utc)
        try:
            rows = self.api.query(usage_query(now))
        except UsageError as exc:
            log.warning("%s; keeping the current budget map", exc)
            return None
        usage = {labels.get("client", ""): value for labels, value in rows}
        decision = decide(usage, self.budgets, now)
        if write_if_changed(self.map_file, render_map(decision)):
            log.info("over budget now: %s", ", ".join(sorted(decision.blocked)) or "nobody")
            reload_nginx(self.pid_file)
        return decision

    def run(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # a bad answer must not end enforcement
                log.exception("budget round failed")
            stop.wait(interval_s)


def parse_budget(value: str) -> tuple[str, int]:
    client, sep, tokens = value.partition("=")
    if not sep or not _CLIENT.match(client) or not tokens.isdigit() or int(tokens) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not CLIENT=TOKENS, e.g. team-a=100000")
    return client, int(tokens)


def controller_arguments(
    prometheus_url: str,
    budgets: Mapping[str, int],
    map_file: str,
    pid_file: str,
    interval_s: float = 15.0,
    prometheus_user: str | None = None,
) -> list[str]:
    """Arguments of `python -m fleet.exporters.budget` (the gateway component and the loopback data plane). With
    `prometheus_user`, the password comes from the environment (PASSWORD_ENV), never from the arguments."""
    args = ["--prometheus-url", prometheus_url, "--map-file", map_file, "--nginx-pid-file", pid_file,
            "--interval", f"{interval_s:g}"]
    if prometheus_user:
        args += ["--prometheus-user", prometheus_user]
    for client, tokens in sorted(budgets.items()):
        args += ["--budget", f"{client}={tokens}"]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet.exporters.budget", description="Token budget controller of the gateway.")
    parser.add_argument("--prometheus-url", required=True)
    parser.add_argument("--prometheus-user", default=None, help=f"basic-auth user; the password comes from {PASSWORD_ENV}")
    parser.add_argument("--budget", action="append", type=parse_budget, default=[], metavar="CLIENT=TOKENS")
    parser.add_argument("--map-file", type=Path, required=True, help="the nginx map include to write")
    parser.add_argument("--nginx-pid-file", type=Path, required=True, help="nginx's pid file (reload by SIGHUP)")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between rounds (default: 15)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = PrometheusApi(args.prometheus_url, username=args.prometheus_user, password=os.environ.get(PASSWORD_ENV))
    controller = BudgetController(api, dict(args.budget), args.map_file, args.nginx_pid_file)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("enforcing %d budget(s) into %s", len(controller.budgets), args.map_file)
    controller.run(max(1.0, args.interval), stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
