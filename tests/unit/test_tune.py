"""`fleet tune`: the knee on synthetic sweeps, the config change it names, and refusal of values that the
capacity model says do not fit."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from fake_ollama import Behavior, FakeOllama
from typer.testing import CliRunner

from fleet import capacity
from fleet.ops import loadtest as lt
from fleet.ops import tune as tn
from fleet.cli.load import register
from fleet.stack_file import load_stack

BOUNDS = tn.Bounds(max_p95_ttft_s=1.0, max_error_rate=0.02)


def summary(level: int, tokens_per_s: float, p95: float | None, error_rate: float = 0.0) -> lt.LevelSummary:
    """A level summary with the figures the knee depends on (the rest consistent but irrelevant)."""
    base = lt.summarize("closed", level, [], 10.0)
    return replace(
        base,
        requests=100,
        ok=round(100 * (1 - error_rate)),
        errors=round(100 * error_rate),
        error_rate=error_rate,
        tokens_per_s=tokens_per_s,
        throughput_rps=tokens_per_s / 50,
        ttft_p50_s=None if p95 is None else p95 / 2,
        ttft_p95_s=p95,
    )


def points(rows) -> list[tn.Point]:
    return [tn.Point(value, summary(value, *rest)) for value, *rest in rows]


def test_knee_is_the_best_throughput_within_bounds():
    sweep = points([(1, 100, 0.2), (2, 190, 0.3), (4, 350, 0.6), (8, 420, 1.4), (16, 430, 3.0)])
    knee = tn.pick_knee(sweep, BOUNDS)
    assert knee.point.value == 4
    assert knee.eligible == (1, 2, 4)
    assert set(knee.reasons) == {8, 16} and "p95 TTFT 1.400s > 1s" in knee.reasons[8][0]


def test_error_rate_bound_excludes_a_faster_value():
    sweep = points([(2, 200, 0.3), (4, 380, 0.5, 0.05), (8, 400, 0.7, 0.0)])
    knee = tn.pick_knee(sweep, BOUNDS)
    assert knee.point.value == 8
    assert knee.reasons[4] == ["error rate 5.0% > 2.0%"]


def test_on_a_plateau_the_smallest_value_within_tolerance_wins():
    sweep = points([(2, 300, 0.2), (4, 400, 0.3), (8, 410, 0.5), (16, 415, 0.9)])
    assert tn.pick_knee(sweep, BOUNDS, tolerance=0.05).point.value == 4
    assert tn.pick_knee(sweep, BOUNDS, tolerance=0.0).point.value == 16


def test_request_metric_is_used_when_asked_or_when_there_are_no_tokens():
    a = tn.Point(2, replace(summary(2, 100, 0.2), throughput_rps=10.0))
    b = tn.Point(4, replace(summary(4, 200, 0.3), throughput_rps=9.0))
    assert tn.pick_knee([a, b], BOUNDS, metric="tokens", tolerance=0).point.value == 4
    assert tn.pick_knee([a, b], BOUNDS, metric="requests", tolerance=0).point.value == 2
    no_tokens = [tn.Point(p.value, replace(p.summary, tokens_per_s=0.0)) for p in (a, b)]
    assert tn.pick_knee(no_tokens, BOUNDS, metric="tokens", tolerance=0).point.value == 2


def test_no_value_within_bounds_gives_no_knee():
    sweep = points([(1, 100, 2.0), (2, 150, None)])
    knee = tn.pick_knee(sweep, BOUNDS)
    assert knee.point is None
    assert knee.reasons[2] == ["no request produced a token"]


def test_num_parallel_change_names_the_yaml_key_and_command():
    settings = load_stack("prod").settings
    rec = tn.recommend("num_parallel", 8, settings, 0)
    (change,) = rec.changes
    assert change.key_path == "ollama-fleet:fleet.nodeGroups[0].ollama.numParallel"
    assert (change.current, change.value) == (settings.node_groups[0].ollama.num_parallel, 8)
    assert change.command("prod") == "pulumi config set --stack prod --path 'fleet.nodeGroups[0].ollama.numParallel' 8"


def _long_context(settings):
    """prod with 32768-token slots, so that the largest numParallel that fits is well below the search limit."""
    group = settings.node_groups[0]
    models = [m.model_copy(update={"num_ctx": 32768}) for m in group.models]
    return settings.model_copy(update={"node_groups": [group.model_copy(update={"models": models})]})


def test_num_parallel_beyond_the_capacity_model_is_refused():
    settings = _long_context(load_stack("prod").settings)
    group = settings.node_groups[0]
    headroom = settings.policy.vram_headroom
    largest = capacity.max_num_parallel(group, headroom)
    assert largest is not None and largest < 64
    assert tn.recommend("num_parallel", largest, settings, 0).changes[0].value == largest
    with pytest.raises(tn.TuneError, match=f"numParallel {largest + 1} does not fit g6e.xlarge.*largest numParallel that fits is {largest}"):
        tn.recommend("num_parallel", largest + 1, settings, 0)
    fitting, refused = tn.split_fitting(group, [1, largest, largest + 1, 64], headroom)
    assert fitting == [1, largest] and set(refused) == {largest + 1, 64}


def test_concurrency_knee_becomes_the_gateway_queue():
    settings = load_stack("prod").settings  # 2 nodes, numParallel 4, one resident model
    group = settings.node_groups[0]
    slots = capacity.max_conns_per_node(group, 0)
    rec = tn.recommend("concurrency", 2 * (slots + 3), settings, 0)
    (change,) = rec.changes
    assert change.key_path == "ollama-fleet:fleet.gateway.queuePerNode" and change.value == 3
    # the gateway then admits exactly the knee per node
    assert capacity.max_conns_per_node(group, change.value) == slots + 3


def test_concurrency_knee_below_the_slots_lowers_num_parallel():
    settings = load_stack("prod").settings
    rec = tn.recommend("concurrency", 4, settings, 0)  # 2 per node, below numParallel 4
    changes = {c.key_path.rsplit(".", 1)[1]: c.value for c in rec.changes}
    assert changes == {"numParallel": 2, "queuePerNode": 0}


def test_unknown_group_is_a_clear_error():
    settings = load_stack("prod").settings
    with pytest.raises(tn.TuneError, match="no node group 'gpu'.*groups: chat"):
        tn.find_group(settings, "gpu", "Pulumi.prod.yaml")


def test_num_parallel_sweep_restarts_per_value():
    """Each value gets its own backend (slots = value), a warm-up request, then `clients_for(value)` clients."""
    started: list[FakeOllama] = []

    def apply(value: int) -> str:
        for server in started:
            server.stop_thread()
        started.clear()
        server = FakeOllama(Behavior(tokens=3, first_token_delay_s=0.05), slots=value).start_thread()
        started.append(server)
        return server.url

    try:
        spec = lt.LoadSpec(url="http://127.0.0.1:1", requests=6, timeout_s=10)
        sweep = tn.sweep_num_parallel(spec, [1, 2], apply, clients_for=lambda v: 2 * v)
        peak = started[-1].stats.peak_active
        served = started[-1].stats.requests
    finally:
        for server in started:
            server.stop_thread()
    assert [p.value for p in sweep] == [1, 2]
    assert [p.summary.level for p in sweep] == [2, 4]  # clients per value
    assert all(p.summary.ok == 6 for p in sweep)
    assert peak <= 2 and served == 7  # the warm-up and six measured requests
    assert [lv.level for lv in tn.sweep_result(spec, sweep).levels] == [1, 2]


def test_cli_refuses_num_parallel_values_that_do_not_fit(monkeypatch, tmp_path, load_cli):
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "Pulumi.yaml").write_text((root / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.prod.yaml").write_text((root / "Pulumi.prod.yaml").read_text().replace("numCtx: 8192", "numCtx: 32768"))
    monkeypatch.chdir(tmp_path)
    settings = load_stack("prod", tmp_path).settings
    largest = capacity.max_num_parallel(settings.node_groups[0], settings.policy.vram_headroom)
    assert largest is not None and largest < 63
    result = CliRunner().invoke(
        load_cli,
        ["tune", "--stack", "prod", "--group", "chat", "--param", "num_parallel", "--values", f"{largest + 1},64",
         "--restart-cmd", "true {value}", "--url", "http://127.0.0.1:9", "-n", "1"],
    )
    assert result.exit_code == 3
    assert f"numParallel {largest + 1} does not fit" in result.output
    assert "nothing to sweep" in result.output


def test_cli_num_parallel_needs_a_way_to_restart(load_cli):
    result = CliRunner().invoke(
        load_cli, ["tune", "--stack", "prod", "--group", "chat", "--param", "num_parallel", "--url", "http://127.0.0.1:9", "-n", "1"]
    )
    assert result.exit_code == 2 and "--restart-cmd" in result.output


def test_cli_tune_sweeps_concurrency_and_prints_the_change(tmp_path, load_cli):
    with FakeOllama(Behavior(tokens=4)) as server:
        result = CliRunner().invoke(
            load_cli,
            ["tune", "--stack", "dev", "--group", "cpu", "--url", server.url, "--values", "1,2", "-n", "5",
             "--max-p95-ttft", "30", "--no-progress", "-o", str(tmp_path)],
        )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "tune.json").read_text())
    assert [p["value"] for p in data["points"]] == [1, 2] and data["knee"] in (1, 2)
    assert f"knee: concurrency = {data['knee']}" in result.output
    assert (tmp_path / "plot.png").is_file()


def test_cli_tune_from_results_without_loading(tmp_path, load_cli):
    sweep = [summary(1, 100, 0.2), summary(2, 200, 0.4), summary(4, 210, 5.0)]
    spec = lt.LoadSpec(url="http://127.0.0.1:1", concurrency=(1, 2, 4), requests=1)
    lt.write_results(lt.LoadResult(spec=spec, levels=sweep, records={}), tmp_path, plot=False)
    result = CliRunner().invoke(
        load_cli, ["tune", "--stack", "dev", "--group", "cpu", "--from-results", str(tmp_path), "--max-p95-ttft", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "knee: concurrency = 2" in result.output
    assert "ollama-fleet:fleet.gateway.queuePerNode" in result.output


def test_cli_tune_with_nothing_in_bounds_exits_non_zero(tmp_path, load_cli):
    spec = lt.LoadSpec(url="http://127.0.0.1:1", concurrency=(1,), requests=1)
    lt.write_results(lt.LoadResult(spec=spec, levels=[summary(1, 100, 9.0)], records={}), tmp_path, plot=False)
    result = CliRunner().invoke(
        load_cli, ["tune", "--stack", "dev", "--group", "cpu", "--from-results", str(tmp_path), "--max-p95-ttft", "1"]
    )
    assert result.exit_code == 1 and "no value of concurrency stays within the bounds" in result.output


def test_refusals_follow_the_ollama_release_of_the_stack():
    settings = _long_context(load_stack("prod").settings)
    group = settings.node_groups[0]
    headroom = settings.policy.vram_headroom
    older = settings.model_copy(update={"images": settings.images.model_copy(update={"ollama": "ollama/ollama:0.24.0@sha256:" + "a" * 64})})
    assert tn.stack_ollama_version(older, "Pulumi.prod.yaml") == "0.24.0"
    largest_then = capacity.max_num_parallel(group, headroom, ollama_version="0.24.0")
    largest_now = capacity.max_num_parallel(group, headroom, ollama_version=tn.stack_ollama_version(settings, "Pulumi.prod.yaml"))
    assert largest_then != largest_now
    with pytest.raises(tn.TuneError, match=f"numParallel {largest_then + 1} does not fit"):
        tn.recommend("num_parallel", largest_then + 1, older, 0)
    unsupported = settings.model_copy(update={"images": settings.images.model_copy(update={"ollama": "ollama/ollama:0.12.0"})})
    with pytest.raises(tn.TuneError, match=r"Pulumi.prod.yaml: .*images.ollama: Ollama 0.12.0 is not supported"):
        tn.stack_ollama_version(unsupported, "Pulumi.prod.yaml")


def test_a_level_is_judged_by_latency_and_decode_speed_too():
    fast_first_token = replace(summary(2, 60, 0.3), latency_p95_s=59.0, decode_tps_p50=1.5)
    fine = replace(summary(1, 33, 0.2), latency_p95_s=2.1, decode_tps_p50=33.0)
    knee = tn.pick_knee([tn.Point(1, fine), tn.Point(2, fast_first_token)], tn.Bounds())
    assert knee.point.value == 1
    assert knee.reasons[2] == ["p95 latency 59.0s > 30s", "decode 1.5 tok/s < 5"]
    # Each bound can be switched off.
    relaxed = tn.Bounds(max_p95_latency_s=None, min_decode_tps=None)
    assert tn.pick_knee([tn.Point(1, fine), tn.Point(2, fast_first_token)], relaxed, tolerance=0).point.value == 2
    assert "p95 latency" in tn.Bounds().describe() and "decode ≥ 5 tok/s" in tn.Bounds().describe()


def test_a_level_whose_requests_were_cut_is_out_of_bounds():
    cut = replace(summary(4, 400, 0.3), cut=3)
    assert tn.Point(4, cut).violations(tn.Bounds()) == ["3 still running after the level (cut)"]


def saturated(value: int, busy: float = 0.97) -> tn.Point:
    return tn.Point(value, replace(summary(value, 60, 0.3), host_cpu_busy=busy, generator_cpus=0.4, host_cpus=2))


def test_shared_cpu_is_detected_only_for_a_local_endpoint_with_busy_cpus():
    sweep = [saturated(1, 0.6), saturated(2)]
    note = tn.shared_cpu("https://127.0.0.1:8443", sweep, "concurrency")
    assert note is not None and "shared this machine's 2 CPUs" in note and "97% busy at concurrency 2" in note
    assert "0.40 of them used by the load generator" in note
    assert tn.shared_cpu("http://localhost:11434", sweep, "concurrency") is not None
    assert tn.shared_cpu("https://192.0.2.10", sweep, "concurrency") is None  # another machine
    assert tn.shared_cpu("https://127.0.0.1:8443", [saturated(1, 0.5), saturated(2, 0.7)], "concurrency") is None
    unmeasured = [tn.Point(1, summary(1, 60, 0.3))]  # results written before CPU use was recorded
    assert tn.shared_cpu("https://127.0.0.1:8443", unmeasured, "concurrency") is None


def test_contention_never_leads_to_fewer_slots_or_a_smaller_queue():
    config = load_stack("dev")
    settings = config.settings  # numParallel 2, queuePerNode 4, one node
    note = "the load generator and the nodes shared this machine's CPUs"
    # The knee (1 in flight) is below the 2 slots: without contention, fewer slots and no queue.
    plain = tn.recommend("concurrency", 1, settings, 0)
    assert {c.key_path.rsplit(".", 1)[1]: c.value for c in plain.changes} == {"numParallel": 1, "queuePerNode": 0}
    shared = tn.recommend("concurrency", 1, settings, 0, contention=note)
    assert shared.changes == [] and any(note in n for n in shared.notes)
    # The knee at the slots would cut the queue from 4 to 0: not on a shared CPU either.
    assert [c.value for c in tn.recommend("concurrency", 2, settings, 0).changes] == [0]
    kept = tn.recommend("concurrency", 2, settings, 0, contention=note)
    assert kept.changes == [] and any("queuePerNode stays 4" in n for n in kept.notes)
    # A larger queue is still recommended: contention cannot make a level look better than it is.
    assert [c.value for c in tn.recommend("concurrency", 8, settings, 0, contention=note).changes] == [6]
    # num_parallel: never lower on a shared CPU, higher is fine.
    assert tn.recommend("num_parallel", 1, settings, 0, contention=note).changes == []
    assert [c.value for c in tn.recommend("num_parallel", 4, settings, 0, contention=note).changes] == [4]


def test_tune_from_local_results_says_the_cpu_was_shared_and_keeps_the_slots(tmp_path):
    sweep = lt.LoadResult(
        spec=lt.LoadSpec(url="https://127.0.0.1:8443", concurrency=(1, 2), duration_s=6.0),
        levels=[
            replace(summary(1, 33, 0.3), latency_p95_s=2.0, decode_tps_p50=33.0, host_cpu_busy=0.95, host_cpus=2),
            replace(summary(2, 3, 0.4), latency_p95_s=59.0, decode_tps_p50=1.5, host_cpu_busy=0.99, host_cpus=2),
        ],
        records={},
    )
    lt.write_results(sweep, tmp_path, plot=False)
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["tune", "--stack", "dev", "--group", "cpu", "--from-results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "p95 latency 59.0s > 30s" in result.output
    assert "shared this machine's 2 CPUs" in result.output
    assert "change in" not in result.output  # no config change from a contended sweep


def _served(level: int, rps: float, ttft_p50: float) -> tn.Point:
    return tn.Point(level, replace(summary(level, rps * 50, 2 * ttft_p50), throughput_rps=rps, ttft_p50_s=ttft_p50))


def test_a_concurrency_sweep_measures_service_time_and_first_token():
    group = load_stack("prod").settings.node_groups[0]  # 2 nodes × 4 slots = 8 slots in the group
    sweep = [_served(1, 0.5, 0.30), _served(4, 2.0, 0.35), _served(8, 3.2, 0.5), _served(16, 3.3, 2.4)]
    measured = tn.measure_service(sweep, group)
    assert measured.first_token_seconds == 0.3  # the lowest load
    assert measured.service_time_seconds == round(8 / 3.3, 3)  # 8 busy slots at 3.3 requests/s
    assert tn.measure_service([_served(2, 1.0, 0.2)], group).service_time_seconds == 2.0  # below the slots
    assert tn.measure_service([], group) is None


def test_with_a_ttft_target_tune_writes_measurements_not_a_queue():
    settings = load_stack("prod").settings
    gateway = settings.gateway.model_copy(update={"queue_per_node": None, "ttft_target_seconds": 1.0})
    group = settings.node_groups[0]
    targeted = settings.model_copy(update={"gateway": gateway})
    sweep = [_served(1, 0.5, 0.2), _served(8, 4.0, 0.4), _served(16, 4.0, 2.0)]
    rec = tn.recommend("concurrency", 16, targeted, 0, measured=tn.measure_service(sweep, group))
    assert {c.key_path.split(".")[-1]: c.value for c in rec.changes} == {"serviceTimeSeconds": 2.0, "firstTokenSeconds": 0.2}
    assert all(".measured." in c.key_path for c in rec.changes)
    # (1.0 - 0.2) s × 4 slots ÷ 2.0 s = 1.6: one request may wait per node
    assert any("each node queues 1 request(s)" in note for note in rec.notes)
    # without a target the knee still sets queuePerNode, next to the measurements
    plain = tn.recommend("concurrency", 16, settings, 0, measured=tn.measure_service(sweep, group))
    assert {c.key_path.split(".")[-1] for c in plain.changes} == {"serviceTimeSeconds", "firstTokenSeconds", "queuePerNode"}
