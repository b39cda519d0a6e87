"""The usage and budget queries evaluated by Prometheus' own engine (`promtool test rules`): exact counts for
series that lived through the window and for series born inside it, `increase()` only for a series reset
inside the window or gone by its end."""

from __future__ import annotations

from datetime import datetime, timezone

import yaml

from fleet.exporters.budget import usage_query
from fleet.usage import REQUESTS_METRIC, TOKENS_METRIC, counted_since, requests_query, tokens_query
from test_prometheus_render import promtool

M = TOKENS_METRIC
SERIES = {
    # steady since long before the window: 10 tokens a minute
    f'{M}{{client="old",model="m",type="prompt"}}': "0+10x60",
    # first request at minute 50 (a meter creates a series with its first count)
    f'{M}{{client="young",model="m",type="prompt"}}': "_x50 5+5x10",
    # its node restarted at minute 41: the counter fell back
    f'{M}{{client="reset",model="m",type="prompt"}}': "0+10x40 5+10x19",
    # its node went away at minute 40
    f'{M}{{client="gone",model="m",type="prompt"}}': "0+10x40",
}


def _check(tmp_path, tests: list[dict]) -> tuple[int, str]:
    (tmp_path / "none.rules.yml").write_text(yaml.safe_dump({"groups": []}))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["none.rules.yml"], "tests": tests}, sort_keys=False))
    result = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    return result.returncode, result.stdout + result.stderr


def _case(expr: str, samples: list[tuple[str, float]]) -> dict:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in SERIES.items()],
        "promql_expr_test": [
            {"expr": expr, "eval_time": "60m", "exp_samples": [{"labels": l, "value": v} for l, v in samples]}
        ],
    }


def test_counts_are_exact_for_series_that_lived_through_or_were_born_in_the_window(tmp_path):
    expr = f'{counted_since(M, "30m", "client")} and on (client) {M}{{client=~"old|young"}}'
    code, out = _check(tmp_path, [_case(expr, [('{client="old"}', 300), ('{client="young"}', 55)])])
    assert code == 0, out


def test_a_reset_or_vanished_series_falls_back_to_increase(tmp_path):
    # For those series the count equals Prometheus' increase() exactly (whatever its extrapolation gives).
    expr = (f'{counted_since(M, "30m", "client")} - on (client) sum by (client) (increase({M}[30m]))'
            f' and on (client) (sum by (client) ({M}{{client=~"reset|gone"}} offset 25m))')
    code, out = _check(tmp_path, [_case(expr, [('{client="reset"}', 0), ('{client="gone"}', 0)])])
    assert code == 0, out


def test_a_wrong_expectation_fails(tmp_path):
    # increase() alone extrapolates the young series back to the window's start: not its exact 55.
    expr = f'sum by (client) (increase({M}{{client="young"}}[30m]))'
    code, out = _check(tmp_path, [_case(expr, [('{client="young"}', 55)])])
    assert code != 0, out


def test_usage_and_budget_queries_count_this_way(tmp_path):
    assert tokens_query("30m", by="client") == counted_since(M, "30m", "client")
    assert requests_query("1h") == counted_since(REQUESTS_METRIC, "1h", "client, model")
    assert usage_query(datetime(2026, 12, 2, 0, 30, tzinfo=timezone.utc)) == counted_since(M, "1800s", "client")
    expr = f'{tokens_query("30m", by="client, type")} and on (client) {M}{{client=~"old|young"}}'
    samples = [('{client="old",type="prompt"}', 300), ('{client="young",type="prompt"}', 55)]
    code, out = _check(tmp_path, [_case(expr, samples)])
    assert code == 0, out
