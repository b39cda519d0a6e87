"""The load generator against the fake Ollama (tests/fake_ollama.py) on 127.0.0.1: counts, timing from the
stream, error classification, bounds, and the files it writes."""

from __future__ import annotations

import asyncio
import csv
import json
import threading

import pytest
from fake_ollama import Behavior, FakeOllama
from typer.testing import CliRunner
from waiting import wait_for

from fleet.ops import loadtest as lt
from fleet.local.processes import free_port  # nothing listens on it

API_ROUTES = {"ollama": "/api/generate", "chat": "/api/chat", "openai": "/v1/chat/completions"}


def spec(url: str, **overrides) -> lt.LoadSpec:
    values = dict(url=url, model="fake:1b", max_tokens=64, timeout_s=10.0, read_timeout_s=10.0)
    values.update(overrides)
    return lt.LoadSpec(**values)


@pytest.mark.parametrize("api", ["ollama", "chat", "openai"])
def test_counts_and_tokens_per_api(api):
    with FakeOllama(Behavior(tokens=6)) as server:
        result = lt.run_load(spec(server.url, api=api, concurrency=(1, 3), requests=10))
        stats = server.stats
    assert [s.level for s in result.levels] == [1, 3]
    for summary in result.levels:
        assert (summary.requests, summary.ok, summary.errors) == (10, 10, 0)
        assert summary.status_counts == {"200": 10}
    records = [r for rs in result.records.values() for r in rs]
    assert all(r.tokens == 6 and r.server_tokens == 6 for r in records)
    assert all(r.ttft_s is not None and r.ttft_s <= r.latency_s for r in records)
    assert stats.requests == 20 and stats.completed == 20
    assert stats.by_path == {API_ROUTES[api]: 20}
    # three clients never had more than three requests in flight
    assert stats.peak_active <= 3


def test_max_tokens_is_sent_and_caps_the_stream():
    with FakeOllama(Behavior(tokens=50)) as server:
        result = lt.run_load(spec(server.url, api="openai", max_tokens=4, requests=3))
    assert [r.tokens for r in result.records[1]] == [4, 4, 4]
    assert [r.server_tokens for r in result.records[1]] == [4, 4, 4]


def test_api_key_goes_in_the_bearer_header_and_never_into_results(tmp_path):
    with FakeOllama(Behavior(tokens=2)) as server:
        result = lt.run_load(spec(server.url, requests=4, api_key="sekret-key-0123456789"))
        seen = dict(server.stats.authorization)
    assert seen == {"Bearer sekret-key-0123456789": 4}
    lt.write_results(result, tmp_path, plot=False)
    for path in tmp_path.iterdir():
        assert "sekret-key" not in path.read_text()
    assert json.loads((tmp_path / "results.json").read_text())["spec"]["api_key_sent"] is True


def test_ttft_is_the_first_streamed_token_not_the_headers():
    # Headers leave at once; the first token 0.3 s later, then two more 0.2 s apart.
    behavior = Behavior(tokens=3, headers_early=True, first_token_delay_s=0.3, token_delay_s=0.2)
    with FakeOllama(behavior) as server:
        result = lt.run_load(spec(server.url, requests=2))
    for record in result.records[1]:
        assert record.ok
        assert record.ttft_s >= 0.3
        assert record.ttft_s - record.ttfb_s >= 0.29  # the wait between headers and the first token
        assert record.latency_s - record.ttft_s >= 0.39  # two more tokens after the first
        assert record.tokens == 3 and record.decode_tps is not None


def test_http_errors_are_counted_by_status_with_retry_after():
    behaviors = [
        Behavior(tokens=2),
        Behavior(status=429, retry_after="7"),
        Behavior(status=503, retry_after="3"),
        Behavior(status=500),
    ]
    with FakeOllama(behaviors) as server:
        result = lt.run_load(spec(server.url, concurrency=(1,), requests=8))
    summary = result.levels[0]
    assert summary.status_counts == {"200": 2, "429": 2, "500": 2, "503": 2}
    assert summary.error_counts == {"http_429": 2, "http_500": 2, "http_503": 2}
    assert summary.ok == 2 and summary.errors == 6 and summary.error_rate == pytest.approx(0.75)
    assert summary.refusals == 4 and summary.refusal_latency_p50_s is not None
    assert summary.retry_after_seen == 4 and summary.retry_after_values == ["3", "7"]
    refused = [r for r in result.records[1] if r.status == 503]
    assert all(r.phase is None and "fake Ollama status 503" in r.detail for r in refused)


def test_timeouts_before_and_after_the_first_byte():
    behaviors = [Behavior(hang_before_headers=True), Behavior(tokens=5, hang_after_tokens=2)]
    with FakeOllama(behaviors) as server:
        result = lt.run_load(spec(server.url, requests=2, timeout_s=0.5, read_timeout_s=0.5))
    before, after = result.records[1]
    assert (before.error, before.phase, before.status) == ("timeout", "before_first_byte", None)
    assert (after.error, after.phase, after.status) == ("timeout", "after_first_byte", 200)
    assert after.tokens == 2 and after.ttft_s is not None
    assert result.levels[0].timeouts == 2
    assert result.levels[0].error_counts == {"timeout/after_first_byte": 1, "timeout/before_first_byte": 1}


def test_a_connection_cut_mid_stream_is_a_failure_after_the_first_byte():
    with FakeOllama([Behavior(tokens=6, drop_after_tokens=2), Behavior(tokens=2)]) as server:
        result = lt.run_load(spec(server.url, requests=2))
    cut, fine = result.records[1]
    assert cut.error in ("disconnect", "incomplete") and cut.phase == "after_first_byte"
    assert cut.tokens == 2
    assert fine.ok
    assert result.levels[0].errors_after_first_byte == 1


def test_connection_refused_is_a_failure_before_the_first_byte():
    result = lt.run_load(spec(f"http://127.0.0.1:{free_port()}", requests=3, concurrency=(2,)))
    summary = result.levels[0]
    assert summary.requests == 3 and summary.ok == 0
    assert summary.error_counts == {"connect/before_first_byte": 3}
    assert summary.errors_before_first_byte == 3


def test_an_error_inside_a_200_stream_is_reported():
    parser = lt.StreamParser("ollama")
    events = parser.feed(b'{"response":"a","done":false}\n{"error":"model runner crashed"}\n')
    assert events[0].token and events[1].error == "model runner crashed"
    sse = lt.StreamParser("openai")
    events = sse.feed(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: {"choices":[],"usage":{"completion_tokens":9}}\n\ndata: [DONE]\n\n')
    assert [e.token for e in events] == [True, False, False]
    assert events[1].server_tokens == 9 and events[2].done


def test_a_stream_split_anywhere_is_parsed_the_same():
    data = b'{"response":"a","done":false}\n{"response":"b","done":false}\n{"response":"","done":true,"eval_count":2}\n'
    for cut in range(1, len(data)):
        parser = lt.StreamParser("ollama")
        events = parser.feed(data[:cut]) + parser.feed(data[cut:]) + parser.finish()
        assert sum(e.token for e in events) == 2 and events[-1].done and events[-1].server_tokens == 2


def test_unbounded_runs_are_refused():
    with pytest.raises(lt.LoadSpecError, match="unbounded"):
        spec("http://127.0.0.1:9").validate()
    with pytest.raises(lt.LoadSpecError, match="--requests"):
        spec("http://127.0.0.1:9", requests=0).validate()
    with pytest.raises(lt.LoadSpecError, match="--duration"):
        spec("http://127.0.0.1:9", duration_s=0).validate()


def test_closed_loop_bounded_by_duration():
    with FakeOllama(Behavior(tokens=2, token_delay_s=0.02)) as server:
        result = lt.run_load(spec(server.url, concurrency=(2,), duration_s=0.5))
    records = result.records[2]
    assert records and all(r.ok for r in records)
    assert all(r.start_s < 0.5 for r in records)  # nothing starts after the duration


def test_closed_loop_bounded_by_count_and_duration_together():
    with FakeOllama(Behavior(tokens=1)) as server:
        result = lt.run_load(spec(server.url, concurrency=(4,), requests=7, duration_s=30))
    assert result.levels[0].requests == 7


def test_open_loop_sends_at_the_rate_until_count_or_duration():
    with FakeOllama(Behavior(tokens=2)) as server:
        by_count = lt.run_load(spec(server.url, rate=(20.0,), requests=5))
        by_time = lt.run_load(spec(server.url, rate=(8.0,), duration_s=0.5))
    assert by_count.levels[0].requests == 5 and by_count.levels[0].mode == "open"
    # arrivals every 0.125 s at 0, 0.125, 0.25, 0.375: the next one would start at the duration
    records = by_time.records[8.0]
    assert len(records) == 4
    starts = [r.start_s for r in records]
    assert all(b >= a for a, b in zip(starts, starts[1:]))
    assert starts[-1] >= 0.375


def test_open_loop_does_not_wait_for_earlier_requests():
    # Each request takes 0.4 s; at 20 requests/s several must be in flight at once.
    with FakeOllama(Behavior(tokens=1, first_token_delay_s=0.4)) as server:
        lt.run_load(spec(server.url, rate=(20.0,), requests=6))
        peak = server.stats.peak_active
    assert peak >= 2


def test_backend_slots_queue_requests_and_refuse_beyond_max_queue():
    backend = FakeOllama(Behavior(tokens=1, first_token_delay_s=0.3), slots=1, max_queue=1)
    with backend.start_thread() as server:
        result = lt.run_load(spec(server.url, concurrency=(4,), requests=4))
    summary = result.levels[0]
    assert backend.stats.peak_active == 1
    assert summary.status_counts.get("503", 0) == backend.stats.refused_queue_full >= 1
    assert summary.ok + summary.status_counts.get("503", 0) == 4


def test_results_files_json_csv_png(tmp_path):
    with FakeOllama(Behavior(tokens=3)) as server:
        result = lt.run_load(spec(server.url, concurrency=(1, 2), requests=5))
    written = lt.write_results(result, tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["plot.png", "requests-concurrency-1.csv", "requests-concurrency-2.csv", "results.json", "summary.csv"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert [level["requests"] for level in data["levels"]] == [5, 5]
    assert data["spec"]["route"] == "/api/generate" and "api_key" not in data["spec"]
    with (tmp_path / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["level"] for r in rows] == ["1", "2"] and all(r["ok"] == "5" for r in rows)
    with (tmp_path / "requests-concurrency-2.csv").open() as handle:
        requests = list(csv.DictReader(handle))
    assert len(requests) == 5 and all(r["tokens"] == "3" for r in requests)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the summaries read back are the ones `fleet tune --from-results` uses
    assert lt.LevelSummary(**data["levels"][1]).ok == 5


def test_cli_loadtest_writes_results_and_refuses_unbounded(tmp_path, load_cli):
    runner = CliRunner()
    with FakeOllama(Behavior(tokens=2)) as server:
        done = runner.invoke(
            load_cli, ["loadtest", server.url, "-c", "1,2", "-n", "4", "--api", "chat", "--no-progress", "-o", str(tmp_path)]
        )
        unbounded = runner.invoke(load_cli, ["loadtest", server.url, "-c", "1"])
        bad_api = runner.invoke(load_cli, ["loadtest", server.url, "-n", "1", "--api", "grpc"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "plot.png").is_file() and (tmp_path / "summary.csv").is_file()
    assert unbounded.exit_code == 2 and "unbounded run refused" in unbounded.output
    assert bad_api.exit_code == 2 and "allowed: ollama, chat, openai" in bad_api.output


def test_cli_loadtest_fails_when_nothing_succeeds(load_cli):
    result = CliRunner().invoke(load_cli, ["loadtest", f"http://127.0.0.1:{free_port()}", "-n", "2", "--no-progress"])
    assert result.exit_code == 1
    assert "connect/before_first_byte" in result.output


def test_clients_send_from_the_given_source_addresses():
    # Closed loop: the four clients each send their first request before any answer can arrive, and keep
    # their connection for the next ones, however slow the answers.
    with FakeOllama(Behavior(tokens=1)) as server:
        result = lt.run_load(spec(server.url, concurrency=(4,), requests=8, source_addresses=("127.0.0.2", "127.0.0.3")))
        peers = dict(server.stats.connections_by_peer)
    assert result.levels[0].ok == 8
    assert peers == {"127.0.0.2": 2, "127.0.0.3": 2}  # four clients, one kept-alive connection each
    # Open loop: every request takes the next address. The fake holds them until all six have arrived, so each
    # was sent while the others were in flight and has a connection of its own, whatever the machine's speed.
    with FakeOllama(Behavior(tokens=1)) as server:
        server.hold()
        releaser = threading.Thread(target=_release_when_received, args=(server, 6), daemon=True)
        releaser.start()
        held = lt.run_load(spec(server.url, rate=(50.0,), requests=6, source_addresses=("127.0.0.4", "127.0.0.5", "127.0.0.6")))
        releaser.join(timeout=10)
        by_request = dict(server.stats.connections_by_peer)
    assert held.levels[0].ok == 6
    assert by_request == {"127.0.0.4": 2, "127.0.0.5": 2, "127.0.0.6": 2}
    with pytest.raises(lt.LoadSpecError, match="--source-ip"):
        spec(server.url, requests=1, source_addresses=("nope",)).validate()


def _release_when_received(server: FakeOllama, count: int) -> None:
    wait_for(lambda: len(server.received) >= count, f"{count} requests at the fake", timeout=10)
    server.release()


def test_open_loop_requests_take_the_next_address_and_reuse_a_free_client():
    # One request at a time (each finished before the next starts): the addresses still take turns, and a
    # client whose request has finished is used again for its address instead of opening another connection.
    clients = lt._Clients(spec("http://127.0.0.1:1", rate=(1.0,), requests=6,
                               source_addresses=("127.0.0.4", "127.0.0.5", "127.0.0.6")))
    used = []
    for _ in range(6):
        client = clients.acquire()
        used.append(client)
        clients.release(client)
    try:
        assert len({id(c) for c in used}) == 3
        assert used[3:] == used[:3]  # the fourth request is the first address again, on the first's client
        # while one is in flight, the next request on its address gets a client (and connection) of its own
        busy = clients.acquire()
        assert busy is used[0] and clients.acquire() is used[1] and clients.acquire() is used[2]
        assert clients.acquire() not in used
    finally:
        asyncio.run(clients.aclose())


def test_a_level_ends_on_time_and_reports_what_it_cut():
    # Each answer takes ~2 s; the level lasts 0.3 s and its in-flight requests may run 0.3 s more.
    with FakeOllama(Behavior(tokens=20, token_delay_s=0.1)) as server:
        result = lt.run_load(spec(server.url, concurrency=(3,), duration_s=0.3, drain_s=0.3))
    level = result.levels[0]
    assert level.wall_s < 1.5  # not the 2 s the requests would have taken, nor the 10 s timeout
    assert level.cut == level.requests == 3 and level.ok == 0
    assert level.errors == 0 and level.error_rate == 0.0  # a cut request is not the server's error
    assert {r.error for r in result.records[3]} == {"cut"}
    assert lt.LoadSpec(url="http://x", duration_s=4.0).drain_after_s == 4.0  # default: the level's duration
    assert lt.LoadSpec(url="http://x", requests=4).drain_after_s is None  # no level end, nothing to cut
    with pytest.raises(lt.LoadSpecError, match="--drain"):
        lt.LoadSpec(url="http://x", duration_s=1.0, drain_s=-1).validate()


def test_requests_that_finish_within_the_drain_time_count():
    with FakeOllama(Behavior(tokens=5, token_delay_s=0.05)) as server:
        result = lt.run_load(spec(server.url, concurrency=(2,), duration_s=0.2, drain_s=5.0))
    level = result.levels[0]
    assert level.cut == 0 and level.ok == level.requests >= 2


def test_each_level_records_the_machines_cpu_use():
    with FakeOllama(Behavior(tokens=4)) as server:
        result = lt.run_load(spec(server.url, concurrency=(2,), requests=6))
    level = result.levels[0]
    assert level.host_cpus is not None and level.host_cpus >= 1
    assert level.host_cpu_busy is not None and 0.0 <= level.host_cpu_busy <= 1.0
    assert level.generator_cpus is not None and level.generator_cpus > 0


def test_the_plot_has_latency_and_decode_panels_from_zero_with_sample_counts():
    with FakeOllama(Behavior(tokens=6, token_delay_s=0.01)) as server:
        result = lt.run_load(spec(server.url, concurrency=(1, 2), requests=4))
    result.levels[1].errors, result.levels[1].error_rate = 1, 0.25  # one failed request of four
    fig = lt.level_figure(result)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert {"latency (s)", "decode speed (tokens/s per request)", "share of requests (%)"} <= set(labels)
    assert any(label.startswith("throughput (tokens/s") for label in labels)
    for ax in fig.axes:
        assert ax.get_ylim()[0] == 0, ax.get_ylabel()
    errors_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "share of requests (%)")
    assert errors_ax.get_ylim() == (0, 105)  # a percentage axis, not a 0-1 fraction
    assert max(errors_ax.lines[0].get_ydata()) == 25.0
    notes = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"n=4", "1/4"} <= notes  # sample counts at the points
