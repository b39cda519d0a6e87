"""`fleet fit` / `fleet plan` always answer the inverse questions, and `fleet catalog` lists what the capacity
model knows, with on-demand prices from a cited source."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from fleet import capacity, catalog
from fleet.capacity_limits import group_limits
from fleet.cli import app


def _group(num_parallel: int = 4, num_ctx: int = 8192, instance: str = "g5.xlarge", quant: str = "q4_K_M"):
    return capacity.single_model_group("qwen2.5:7b", quant, num_ctx, num_parallel, instance, "f16", True)


def test_limits_are_the_capacity_models_own_answers_for_a_group_that_fits():
    group = _group()
    assert capacity.estimate_node(group, 0.1).fits
    limits = group_limits(group, 0.1)
    assert limits.max_num_parallel == capacity.max_num_parallel(group, 0.1) > 4
    assert not capacity.fits(group.model_copy(update={"ollama": group.ollama.model_copy(update={"num_parallel": limits.max_num_parallel + 1})}), 0.1)
    model = limits.models[0]
    assert model.max_num_ctx == capacity.max_num_ctx(group, "qwen2.5:7b", 0.1) >= 8192
    assert model.fitting_quantizations == tuple(capacity.fitting_quantizations(group, "qwen2.5:7b", 0.1))
    assert limits.smallest_instance == capacity.smallest_fitting_instance(group, 0.1)
    assert limits.usd_per_hour == catalog.ON_DEMAND_USD_PER_HOUR["g5.xlarge"]


def test_a_cpu_group_has_no_vram_limits():
    from fleet.stack_file import load_stack

    assert group_limits(load_stack("dev").settings.node_groups[0], 0.1) is None


def test_fit_prints_the_limits_when_it_fits_and_when_it_does_not():
    runner = CliRunner()
    fits = runner.invoke(app, ["fit", "-m", "qwen2.5:7b", "-q", "q4_K_M", "--num-ctx", "8192", "-p", "4", "-i", "g5.xlarge"])
    assert fits.exit_code == 0, fits.output
    limits = group_limits(_group(), capacity.DEFAULT_HEADROOM)
    assert f"largest numParallel: {limits.max_num_parallel} (now 4)" in fits.output
    assert f"largest numCtx {limits.models[0].max_num_ctx} (now 8192)" in fits.output
    assert "quantizations that fit: q4_0, q4_K_M" in fits.output
    assert f"smallest instance type that fits: {limits.smallest_instance}" in fits.output
    assert "$1.006/h on demand" in fits.output
    too_big = runner.invoke(app, ["fit", "-m", "llama3.1:70b", "-q", "q4_K_M", "--num-ctx", "8192", "-p", "4", "-i", "g5.xlarge"])
    assert too_big.exit_code == 1 and "numParallel: none fits" in too_big.output
    data = json.loads(runner.invoke(app, ["fit", "-m", "qwen2.5:7b", "-q", "q4_K_M", "--num-ctx", "8192", "-p", "4",
                                          "-i", "g5.xlarge", "--json"]).output)
    assert data["limits"]["max_num_parallel"] == limits.max_num_parallel
    assert data["limits"]["priceSource"] == catalog.ON_DEMAND_PRICE_SOURCE


def test_plan_prints_the_limits_of_every_gpu_group():
    result = CliRunner().invoke(app, ["plan", "--stack", "prod"])
    assert result.exit_code == 0, result.output
    assert "largest numParallel" in result.output and "smallest instance type that fits" in result.output
    data = json.loads(CliRunner().invoke(app, ["plan", "--stack", "prod", "--json"]).output)
    assert all(group["limits"]["max_num_parallel"] for group in data["groups"])


def test_catalog_lists_models_and_instances_with_prices_and_their_source():
    runner = CliRunner()
    instances = runner.invoke(app, ["catalog", "instances"])
    assert instances.exit_code == 0
    text = " ".join(instances.output.split())
    assert "aws.amazon.com/ec2/pricing/on-demand" in text and "2025-07-01" in text
    for name, instance in catalog.INSTANCES.items():
        assert name in instances.output
        if instance.on_demand_usd_per_hour is not None:
            assert f"{instance.on_demand_usd_per_hour:,.3f}" in instances.output
    data = json.loads(runner.invoke(app, ["catalog", "instances", "--json"]).output)
    assert {i["instance"] for i in data["instances"]} == set(catalog.INSTANCES)
    assert set(catalog.ON_DEMAND_USD_PER_HOUR) <= set(catalog.INSTANCES)  # no price for an unknown type
    models = runner.invoke(app, ["catalog", "models"])
    assert models.exit_code == 0 and all(ref in models.output for ref in catalog.MODELS)
    assert {m["model"] for m in json.loads(runner.invoke(app, ["catalog", "models", "--json"]).output)} == set(catalog.MODELS)


def test_the_limits_follow_the_rules_of_the_release_asked_for():
    # qwen2.5:7b 18944 × 8 on an A10G: fits under v0.30+'s rules, not under v0.24.0's (issue case); the limits
    # printed beside each verdict are those of the same release.
    runner = CliRunner()
    args = ["fit", "-m", "qwen2.5:7b", "-q", "q4_K_M", "--num-ctx", "18944", "-p", "8", "-i", "g5.xlarge", "--json"]
    for version in ("0.24.0", "0.32.15"):
        data = json.loads(runner.invoke(app, [*args, "--ollama-version", version]).output)
        limits = data["limits"]
        group = _group(8, 18944)
        assert limits["max_num_parallel"] == capacity.max_num_parallel(group, 0.1, ollama_version=version)
        assert (limits["max_num_parallel"] >= 8) is data["fits"]
        assert (limits["models"][0]["max_num_ctx"] >= 18944) is data["fits"]
        assert ("q4_K_M" in limits["models"][0]["fitting_quantizations"]) is data["fits"]
        assert (limits["smallest_instance"] == "g5.xlarge") is data["fits"]
    assert not json.loads(runner.invoke(app, [*args, "--ollama-version", "0.24.0"]).output)["fits"]


def test_plan_judges_with_the_headroom_the_policy_pack_uses(monkeypatch, tmp_path):
    # prod's policy config raises every node's headroom to at least 10% (vram-fit minHeadroom): a stack file that
    # asks for none gets the same verdict from `fleet plan` as from the pack.
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    (tmp_path / "Pulumi.yaml").write_text((root / "Pulumi.yaml").read_text())
    text = (root / "Pulumi.prod.yaml").read_text().replace("numCtx: 8192", "numCtx: 131072").replace("vramHeadroom: 0.10", "vramHeadroom: 0")
    assert "numCtx: 131072" in text and "vramHeadroom: 0\n" in text
    (tmp_path / "Pulumi.prod.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    group = capacity.single_model_group("llama3.1:8b", "q4_K_M", 131072, 4, "g6e.xlarge", "q8_0", True)
    assert capacity.fits(group, 0.0) and not capacity.fits(group, 0.1)
    result = CliRunner().invoke(app, ["plan", "--stack", "prod", "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)["groups"][0]
    assert data["headroom"] == 0.1 and not data["fits"]
    assert data["limits"]["models"][0]["max_num_ctx"] < 131072
