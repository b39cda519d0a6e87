"""The gateway log exporter: following a log file through late creation, partial lines, truncation and
rotation (fleet/exporters/log_follower.py); classifying nginx's access-log lines against the rendered gateway config;
the metrics and the command itself (fleet/exporters/gateway_log.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest
from metric_samples import parse_samples, total
from waiting import wait_for

from fleet.exporters import gateway_log as gl
from fleet import gateway_routes
from fleet.local.processes import free_port
from fleet.exporters.log_follower import LogFollower
from fleet.render import nginx
from fleet.stack_file import load_stack


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _append(path: Path, text: str) -> None:
    # O_APPEND, one write per call: how nginx writes its log lines.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class AppendingWriter:
    """A writer that keeps its descriptor across a rename, as an nginx worker does until it reopens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def reopen(self) -> None:
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def close(self) -> None:
        os.close(self.fd)


# ---- following a file ----------------------------------------------------------------------------------


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path):
    path = tmp_path / "access.log"
    with LogFollower(path) as follower:
        assert follower.poll() == [] and not follower.is_open
        _append(path, "one\ntwo\n")
        assert follower.poll() == [b"one", b"two"]
        assert follower.is_open and follower.stats.opened == 1


def test_an_existing_file_is_read_from_its_end_unless_asked(tmp_path):
    path = tmp_path / "access.log"
    _append(path, "old-1\nold-2\n")
    with LogFollower(path) as follower:
        assert follower.poll() == []
        _append(path, "new\n")
        assert follower.poll() == [b"new"]
    with LogFollower(path, from_start=True) as follower:
        assert follower.poll() == [b"old-1", b"old-2", b"new"]


def test_a_line_being_written_waits_for_its_end(tmp_path):
    path = tmp_path / "access.log"
    with LogFollower(path) as follower:
        _append(path, '{"a":1}\n{"b":')
        assert follower.poll() == [b'{"a":1}']
        assert follower.poll() == []
        _append(path, "2}\n")
        assert follower.poll() == [b'{"b":2}']
        _append(path, "x")
        _append(path, "y")
        _append(path, "z\nlast\n")
        assert follower.poll() == [b"xyz", b"last"]


def test_truncation_in_place_starts_over(tmp_path):
    path = tmp_path / "access.log"
    with LogFollower(path) as follower:
        _append(path, "1\n2\n3\n")
        assert follower.poll() == [b"1", b"2", b"3"]
        os.truncate(path, 0)  # copytruncate, `: > access.log`
        _append(path, "4\n")
        assert follower.poll() == [b"4"]
        assert follower.stats.truncations == 1 and follower.stats.rotations == 0
        _append(path, "5\n")
        assert follower.poll() == [b"5"]


def test_rotation_by_rename_and_reopen_loses_no_line(tmp_path):
    """Workers keep writing to the renamed file until they reopen: those lines are read too, and the new
    file from its start; the old one is closed once it stayed quiet for the grace period."""
    path = tmp_path / "access.log"
    clock = FakeClock()
    worker_a, worker_b = AppendingWriter(path), AppendingWriter(path)
    follower = LogFollower(path, grace_s=5.0, clock=clock)
    try:
        assert follower.poll() == []
        worker_a.write("a1\n")
        worker_b.write("b1\n")
        assert follower.poll() == [b"a1", b"b1"]

        os.rename(path, tmp_path / "access.log.1")
        worker_a.write("a2 (old file, before its reopen)\n")
        worker_a.reopen()  # `nginx -s reopen`: the master makes the new file, workers follow one by one
        worker_a.write("a3\n")
        clock.now += 1
        lines = follower.poll()
        assert lines == [b"a2 (old file, before its reopen)", b"a3"]
        assert follower.stats.rotations == 1

        worker_b.write("b2 (old file, still)\n")
        clock.now += 3
        worker_a.write("a4\n")
        assert sorted(follower.poll()) == sorted([b"b2 (old file, still)", b"a4"])
        worker_b.reopen()
        worker_b.write("b3\n")
        assert follower.poll() == [b"b3"]

        # Quiet for longer than the grace period: the rotated file is let go.
        clock.now += 6
        assert follower.poll() == []
        assert follower.stats.opened == 2 and len(follower._retiring) == 0
    finally:
        follower.close()
        worker_a.close()
        worker_b.close()


def test_rotation_before_the_new_file_exists_and_a_deleted_old_file(tmp_path):
    path = tmp_path / "access.log"
    clock = FakeClock()
    with LogFollower(path, grace_s=5.0, clock=clock) as follower:
        writer = AppendingWriter(path)
        writer.write("1\n")
        assert follower.poll() == [b"1"]
        os.rename(path, tmp_path / "access.log.1")
        writer.write("2\n")
        assert follower.poll() == [b"2"] and not follower.is_open
        # logrotate may delete the previous rotation while it is still being read: the open file still reads.
        os.unlink(tmp_path / "access.log.1")
        writer.write("3\n")
        clock.now += 1
        assert follower.poll() == [b"3"]
        writer.reopen()
        writer.write("4\n")
        assert follower.poll() == [b"4"] and follower.is_open
    writer.close()


def test_an_unfinished_line_in_a_rotated_file_is_dropped_and_counted(tmp_path):
    path = tmp_path / "access.log"
    clock = FakeClock()
    with LogFollower(path, grace_s=1.0, clock=clock) as follower:
        _append(path, "whole\nhalf")
        assert follower.poll() == [b"whole"]
        os.rename(path, tmp_path / "access.log.1")
        _append(path, "new\n")
        assert follower.poll() == [b"new"]
        clock.now += 2
        assert follower.poll() == []
        assert follower.stats.dropped_lines == 1


def test_over_long_lines_are_dropped_whole(tmp_path):
    path = tmp_path / "access.log"
    with LogFollower(path, max_line_bytes=16) as follower:
        _append(path, "short\n" + "x" * 40)
        assert follower.poll() == [b"short"]
        _append(path, "y" * 40 + "\nafter\n" + "z" * 20 + "\nend\n")
        assert follower.poll() == [b"after", b"end"]
        assert follower.stats.dropped_lines == 2


def test_a_backlog_is_read_over_several_polls_without_loss(tmp_path):
    path = tmp_path / "access.log"
    expected = [f"line-{i:05d}".encode() for i in range(2000)]
    with LogFollower(path, max_read_bytes=1000) as follower:
        _append(path, "".join(line.decode() + "\n" for line in expected))
        got: list[bytes] = []
        for _ in range(100):
            got += follower.poll()
        assert got == expected


# ---- classification -------------------------------------------------------------------------------------


def _locations(conf: str) -> dict[str, str]:
    """Every `location = PATH` / `location ^~ PATH` block of a rendered nginx.conf: path -> block text."""
    found = {}
    for match in re.finditer(r"location (=|\^~) (\S+) \{(.*?)\n        \}", conf, re.S):
        found.setdefault(match.group(2), match.group(3))
    return found


def test_route_classes_agree_with_the_rendered_config():
    settings = load_stack("dev").settings
    group = settings.node_groups[0]
    two = settings.model_copy(update={"node_groups": [group, group.model_copy(update={"name": "batch-x"})]})
    conf = nginx.render_nginx(
        nginx.build_gateway_plan(two, {"cpu": ["127.0.0.1:11435"], "batch-x": ["127.0.0.1:11436"]})
    )
    locations = _locations(conf)
    proxied = {path: block for path, block in locations.items() if "proxy_pass" in block}
    assert any(path.startswith("/groups/batch-x/") for path in proxied)
    for path, block in proxied.items():
        admin = "$fleet_admin_allowed" in block
        route = re.sub(r"^/groups/[^/]+", "", path)
        expected = "admin" if admin else ("inference" if route in nginx.INFERENCE_ROUTES else "read")
        # Prefix locations (`/api/blobs/`, `/v1/models/`) are checked with a path below them.
        probe = path + "sha256:0" if path.endswith("/") else path
        assert gl.route_class(probe) == expected, path
    assert gl.route_class("/health") == "health" and "/health" in locations
    # What the config does not serve is `other` (nginx answers 404), whatever it looks like.
    for path in ("/", "/api/me", "/v1/messages", "/api/generate/x", "/groups/cpu", "/api/blobs", "/metrics"):
        assert gl.route_class(path) == "other", path
    assert set(gl.ROUTES) == {"inference", "read", "admin", "health", "other"}


@pytest.mark.parametrize(
    ("status", "upstream_addr", "upstream_status", "reason"),
    [
        (401, "", "", "unauthorized"),
        (403, "", "", "forbidden"),
        (413, "", "", "too_large"),
        (429, "", "", "rate_limited"),
        # no live upstream: nginx names the group (every node at max_conns, or marked down)
        (503, "fleet_cpu", "502", "shed"),
        (503, "10.0.0.5:11435, fleet_cpu", "502, 502", "shed"),
        (503, "", "", "shed"),
        # the node's own answers, passed through: not the gateway's refusals
        (503, "10.0.0.5:11435", "503", None),
        (503, "10.0.0.5:11435, 10.0.0.6:11435", "503, 503", None),
        (429, "10.0.0.5:11435", "429", None),
        (403, "10.0.0.5:11435", "403", None),
        # every node tried and failing (connection refused): a failure, not a shed
        (503, "10.0.0.5:11435", "502", None),
        (200, "10.0.0.5:11435", "200", None),
        (404, "", "", None),
        (499, "10.0.0.5:11435", "", None),
    ],
)
def test_refusal_reasons(status, upstream_addr, upstream_status, reason):
    assert gl.refusal_reason(status, upstream_addr, upstream_status) == reason


def test_shed_is_recognised_by_the_upstream_names_the_renderer_writes():
    settings = load_stack("prod").settings
    plan = nginx.build_gateway_plan(settings, nginx.placeholder_upstreams(settings))
    for group in plan.groups:
        assert group.upstream == gateway_routes.upstream_name(group.name)
        assert gl.no_live_node(group.upstream) and gl.no_live_node(f"{group.servers[0].address}, {group.upstream}")
        assert not gl.no_live_node(group.servers[0].address)


def _line(**fields) -> bytes:
    entry = {
        "time": "2026-01-01T00:00:00+00:00", "request_id": "r", "client": "alpha", "remote_addr": "10.0.0.9",
        "method": "POST", "uri": "/api/chat", "status": 200, "body_bytes_sent": 10, "request_length": 100,
        "request_time": 1.25, "upstream_addr": "10.0.0.5:11435", "upstream_status": "200",
        "upstream_connect_time": "0.001", "upstream_header_time": "0.400", "upstream_response_time": "1.240",
        "user_agent": "test",
    }
    entry.update(fields)
    return json.dumps(entry).encode()


def test_clients_are_bounded_by_the_configured_names():
    clients = frozenset({"alpha", "beta"})
    assert gl.parse_line(_line(client="alpha"), clients).client == "alpha"
    assert gl.parse_line(_line(client=gateway_routes.ADMIN_CLIENT), clients).client == "_admin"
    for name in ("", "gamma", "alpha ", None, "x" * 300):
        assert gl.parse_line(_line(client=name), clients).client == "unknown", name


def test_malformed_lines_are_not_requests():
    clients = frozenset({"alpha"})
    for line in (b"", b"not json", b"[1, 2]", b'{"status": "200", "uri": "/"}', b'{"uri": "/"}', b"\xff\xfe", b'{"status": 200}'):
        assert gl.parse_line(line, clients) is None, line


def test_timings_only_for_inference_a_node_answered():
    clients = frozenset({"alpha"})
    ok = gl.parse_line(_line(), clients)
    assert ok.proxied_ok and ok.request_time == 1.25 and ok.header_time == pytest.approx(0.4)
    # Retried on another node after a failed attempt: the failed attempt's time counts towards the headers.
    retried = gl.parse_line(
        _line(upstream_addr="10.0.0.5:11435, 10.0.0.6:11435", upstream_status="502, 200",
              upstream_header_time="-, 0.300", upstream_response_time="0.050, 1.100"),
        clients,
    )
    assert retried.header_time == pytest.approx(0.35)
    for fields in ({"uri": "/api/tags"}, {"status": 503, "upstream_addr": "fleet_cpu", "upstream_status": "502"},
                   {"status": 500, "upstream_status": "500"}, {"status": 401, "upstream_addr": "", "upstream_status": ""}):
        request = gl.parse_line(_line(**fields), clients)
        assert not request.proxied_ok and request.request_time is None and request.header_time is None, fields


def _samples(metrics: gl.GatewayLogMetrics) -> dict[tuple[str, tuple], float]:
    return parse_samples(generate_latest(metrics.registry).decode())


def test_metrics_count_each_line_once_under_bounded_labels():
    metrics = gl.GatewayLogMetrics("gateway-0", ["alpha"])
    before = _samples(metrics)
    # Refusal series exist from the start, at 0, for every client and reason.
    assert total(before, "fleet_gateway_refusals_total") == 0
    assert {dict(l)["reason"] for (n, l) in before if n == "fleet_gateway_refusals_total"} == set(gl.REASONS)
    assert {dict(l)["client"] for (n, l) in before if n == "fleet_gateway_refusals_total"} == {"alpha", "_admin", "unknown"}
    # So do the 200/429/503 request series of authenticated clients: the alert's denominator.
    initial = {tuple(dict(l)[k] for k in ("client", "status", "route")) for (n, l) in before if n == "fleet_gateway_requests_total"}
    assert initial == {(c, s, r) for c in ("alpha", "_admin") for s in ("200", "429", "503") for r in ("inference", "read", "admin")}

    lines = [
        _line(),
        _line(client="", status=401, upstream_addr="", upstream_status=""),
        _line(client="sk-not-a-client-key-0123456789", status=401, upstream_addr="", upstream_status=""),
        _line(status=429, upstream_addr="", upstream_status=""),
        _line(status=503, upstream_addr="fleet_cpu", upstream_status="502"),
        _line(status=403, uri="/api/pull", upstream_addr="", upstream_status=""),
        _line(status=413, upstream_addr="", upstream_status=""),
        _line(status=404, uri="/api/me", upstream_addr="", upstream_status=""),
        b"garbage",
    ]
    for line in lines:
        metrics.observe_line(line)
    after = _samples(metrics)
    refusals = {r: total(after, "fleet_gateway_refusals_total", reason=r) for r in gl.REASONS}
    assert refusals == {"unauthorized": 2, "forbidden": 1, "too_large": 1, "rate_limited": 1, "shed": 1}
    assert total(after, "fleet_gateway_refusals_total", client="unknown", reason="unauthorized") == 2
    assert total(after, "fleet_gateway_requests_total") == 8
    assert total(after, "fleet_gateway_requests_total", route="admin", status="403") == 1
    assert total(after, "fleet_gateway_requests_total", route="other", status="404") == 1
    assert total(after, "fleet_gateway_request_duration_seconds_count") == 1
    assert total(after, "fleet_gateway_upstream_header_seconds_sum") == pytest.approx(0.4)
    assert total(after, "fleet_gateway_log_lines_total", result="malformed") == 1
    assert total(after, "fleet_gateway_log_lines_total", result="counted") == 8
    # Whatever a line carries in its client field, only configured names become labels.
    text = generate_latest(metrics.registry).decode()
    assert "sk-not-a-client-key" not in text
    assert {dict(l)["gateway"] for (_, l) in after if "gateway" in dict(l)} == {"gateway-0"}


# ---- the command ----------------------------------------------------------------------------------------


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    return parse_samples(httpx.get(url, timeout=5).text)


def _wait_for(condition, what: str):
    return wait_for(condition, what, 20.0, interval=0.05)


def test_the_command_follows_a_log_through_rotation_and_stops_on_sigterm(tmp_path):
    log = tmp_path / "logs" / "access.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    argv = [sys.executable, "-m", "fleet.exporters.gateway_log"] + gl.exporter_arguments(
        str(log), f"127.0.0.1:{port}", "gateway-0", ["alpha"]
    ) + ["--poll-interval", "0.05", "--rotate-grace", "0.5"]
    out = (tmp_path / "exporter.log").open("wb")
    process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "127.0.0.1"})
    try:
        _wait_for(lambda: _try_scrape(url), "the exporter to answer")
        log.parent.mkdir()  # the folder and the file appear after the exporter started
        writer = AppendingWriter(log)
        for _ in range(3):
            writer.write(_line(status=429, upstream_addr="", upstream_status="").decode() + "\n")
        # Rotations come minutes apart: the file has been read before it is renamed.
        _wait_for(lambda: total(_scrape(url), "fleet_gateway_refusals_total", reason="rate_limited") == 3, "3 rate-limited")
        os.rename(log, tmp_path / "logs" / "access.log.1")
        writer.write(_line(status=429, upstream_addr="", upstream_status="").decode() + "\n")
        writer.reopen()
        for _ in range(2):
            writer.write(_line(status=503, upstream_addr="fleet_cpu", upstream_status="502").decode() + "\n")
        writer.close()
        samples = _wait_for(
            lambda: (lambda s: s if total(s, "fleet_gateway_refusals_total", reason="shed") == 2 else None)(_scrape(url)),
            "2 shed after the rotation",
        )
        assert total(samples, "fleet_gateway_refusals_total", client="alpha", reason="rate_limited") == 4
        assert total(samples, "fleet_gateway_log_file_events_total", event="rotations") == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        out.close()
    assert "alpha" not in (tmp_path / "exporter.log").read_text().replace("--client alpha", "")


def _try_scrape(url: str):
    try:
        return _scrape(url)
    except httpx.HTTPError:
        return None


def test_bad_arguments_are_clear_errors():
    proc = subprocess.run([sys.executable, "-m", "fleet.exporters.gateway_log", "--log", "x", "--metrics-listen", "nowhere"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "is not host:port" in proc.stderr and "Traceback" not in proc.stderr
