"""Capacity rules per Ollama release: which rules apply, and the cases they must judge as Ollama does.

Hand figures below follow Ollama v0.24.0 (`llm/server.go` `llamaServer.Load`, `fs/ggml/ggml.go` `GraphSize`):
qwen2.5:7b is 28 layers, embedding 3584, 28 heads, 4 KV heads, head dim 128, vocabulary 152064;
gemma2:9b is 42 layers, embedding 3584, 16 heads, 8 KV heads, head dim 256, vocabulary 256000.
"""

from __future__ import annotations

import json

import pytest

from fleet import capacity, catalog
from fleet.catalog import GIB, MIB
from fleet.config import Images, ModelSpec, NodeGroup, OllamaSettings
from fleet.ollama_rules import OllamaVersionError, ollama_version_of, rules_for

TESTBED = "0.24.0"
CURRENT = "0.32.15"
A10G_FREE = (23028 - 526) * MIB
B = 512


@pytest.mark.parametrize(
    "version, name",
    [
        ("0.13.1", "v0.13.1–v0.15.4"),
        ("v0.15.4", "v0.13.1–v0.15.4"),
        ("0.15.5", "v0.15.5–v0.29"),
        ("0.24.0", "v0.15.5–v0.29"),
        ("0.29.7", "v0.15.5–v0.29"),
        ("0.30.0", "v0.30+"),
        ("0.32.15", "v0.30+"),
        ("0.33.0-rc1", "v0.30+"),
        ("1.0", "v0.30+"),
    ],
)
def test_rules_by_version(version, name):
    assert rules_for(version).name == name


@pytest.mark.parametrize("version", ["0.13.0", "0.12.11", "0.5.7"])
def test_older_releases_are_refused_naming_the_supported_ranges(version):
    with pytest.raises(OllamaVersionError) as error:
        rules_for(version)
    assert version in str(error.value)
    for name in ("v0.13.1–v0.15.4", "v0.15.5–v0.29", "v0.30+"):
        assert name in str(error.value)


@pytest.mark.parametrize(
    "ref, version",
    [
        ("ollama/ollama:0.32.15@sha256:" + "a" * 64, "0.32.15"),
        ("docker.io/ollama/ollama:0.24.0", "0.24.0"),
        ("registry.example:5000/mirror/ollama:0.30.1-rocm@sha256:" + "b" * 64, "0.30.1"),
        ("ollama/ollama:v0.15.5", "0.15.5"),
    ],
)
def test_version_comes_from_the_image_tag(ref, version):
    assert ollama_version_of(ref) == version


@pytest.mark.parametrize("ref", ["ollama/ollama", "ollama/ollama@sha256:" + "c" * 64, "ollama/ollama:latest", "ollama/ollama:rocm"])
def test_image_without_a_release_tag_is_a_clear_error(ref):
    with pytest.raises(OllamaVersionError, match="tag"):
        ollama_version_of(ref)


@pytest.mark.parametrize("version", ["0.15", "0.13", "0.24.0-rocm", "0.24.0+cuda", "0.32.15.1"])
def test_a_version_that_does_not_name_one_set_of_rules_is_refused(version):
    # 0.15 holds 0.15.4 (flat default context) and 0.15.5 (tiered); 0.13 holds 0.13.0 (unsupported) and 0.13.1.
    with pytest.raises(OllamaVersionError) as error:
        rules_for(version)
    assert repr(version) in str(error.value) and "v0.30+" in str(error.value)


@pytest.mark.parametrize("tag", ["0.15", "0.32.15.1", "0.32.15-cuda", "0.32.15rocm"])
def test_an_image_tag_that_is_not_exactly_a_release_is_refused(tag):
    with pytest.raises(OllamaVersionError, match="v0.13.1"):
        ollama_version_of(f"ollama/ollama:{tag}@sha256:" + "a" * 64)


def test_the_rocm_variant_is_named_as_such():
    from fleet.ollama_rules import image_variant, variant_problem

    rocm = "ollama/ollama:0.32.15-rocm@sha256:" + "a" * 64
    assert (ollama_version_of(rocm), image_variant(rocm)) == ("0.32.15", "rocm")
    assert "ROCm" in variant_problem(rocm, 1) and variant_problem(rocm, 0) is None
    assert variant_problem("ollama/ollama:0.32.15", 4) is None


def test_the_default_image_is_pinned_by_tag_and_digest_with_rules():
    ref = Images.model_fields["ollama"].default
    assert "@sha256:" in ref and ":latest" not in ref
    assert capacity.default_ollama_version() == ollama_version_of(ref)
    assert capacity.rules_of(None).name == rules_for(ollama_version_of(ref)).name


# ---- the cases the issue names, judged as Ollama v0.24.0 judges them ------------------------------------------


def test_qwen_at_the_fit_boundary_needs_partial_graph_margin_and_a_layer():
    estimate = capacity.estimate_fit("qwen2.5:7b", "q4_K_M", 18944, 8, "g5.xlarge", headroom=0, ollama_version=TESTBED)
    model = estimate.models[0]
    context = 18944 * 8
    weights = 4_700_000_000 - 152064 * 3584 * 144 // 256
    output = 152064 * 3584 * 210 // 256 + 4 * 3584
    kv = 28 * context * (128 + 128) * 4 * 2
    full = max(4 * B * (3584 + 152064), 4 * B * (1 + 2 * 3584 + context + context * 28))
    partial = max(4 * B * (3584 + 152064) + 3584 * 152064 * 105 // 128, 4 * (B * (1 + 2 * 3584 + context * 29) + 3584 * (1 + context)))
    assert partial > full  # Ollama reserves the partial-offload graph, the larger one
    buffer = (weights - output) // 28 + kv // 28
    need = weights + kv + partial + 457 * MIB + buffer
    assert (model.weights, model.kv_cache, model.graph, model.layer_buffer) == (weights, kv, partial, buffer)
    assert need > A10G_FREE and not estimate.fits
    assert need / GIB == pytest.approx(23.5, abs=0.1)  # and the card has 21.97 GiB free
    # One step inside: with numParallel 7 Ollama keeps every layer on the GPU.
    assert capacity.estimate_fit("qwen2.5:7b", "q4_K_M", 18944, 7, "g5.xlarge", headroom=0, ollama_version=TESTBED).fits


def test_gemma2_drops_flash_attention_and_the_quantized_cache():
    estimate = capacity.estimate_fit("gemma2:9b", "q4_K_M", 8192, 6, "g5.xlarge", "q4_0", headroom=0, ollama_version=TESTBED)
    model = estimate.models[0]
    assert not model.flash_attention and model.kv_cache_type == "f16"
    assert any("gemma2" in n and "falls back to f16" in n for n in model.notes)
    # Every layer holds the full context on the llama.cpp runner: 42 × 49152 × (256 + 256) × 8 × 2 B
    assert model.kv_cache == 42 * 49152 * 512 * 8 * 2
    assert not estimate.fits and estimate.total > 23 * GIB
    # llama-server (v0.30+) keeps flash attention and the q4_0 cache for gemma2.
    current = capacity.estimate_fit("gemma2:9b", "q4_K_M", 8192, 6, "g5.xlarge", "q4_0", headroom=0, ollama_version=CURRENT)
    assert current.models[0].flash_attention and current.models[0].kv_cache_type == "q4_0" and not current.models[0].notes


@pytest.mark.parametrize(
    "ref, quant, why",
    [("nomic-embed-text:v1.5", "fp16", "embedding model"), ("gemma2:27b", "q4_K_M", "gemma2")],
)
def test_flash_attention_fallback_by_model(ref, quant, why):
    arch = catalog.find_model(ref)
    estimate = capacity.estimate_model(arch, quant, 2048, 2, "q8_0", True, ollama_version=TESTBED)
    assert not estimate.flash_attention and estimate.kv_cache_type == "f16" and why in estimate.notes[-1]
    kept = capacity.estimate_model(catalog.find_model("llama3.1:8b"), "q4_K_M", 2048, 2, "q8_0", True, ollama_version=TESTBED)
    assert kept.flash_attention and kept.kv_cache_type == "q8_0" and not kept.notes


def test_unequal_key_and_value_heads_turn_flash_attention_off():
    base = catalog.find_model("llama3.1:8b")
    odd = type(base)(**{**base.__dict__, "ref": "odd:1b", "value_dim": 64})
    estimate = capacity.estimate_model(odd, "q4_K_M", 4096, 1, "q4_0", True, ollama_version=TESTBED)
    assert not estimate.flash_attention and estimate.kv_cache_type == "f16" and "head sizes differ" in estimate.notes[0]
    # K 128 + V 64 per KV head and token
    assert estimate.kv_cache == 32 * 4096 * (128 + 64) * 8 * 2


def test_embedding_models_run_one_slot():
    g = NodeGroup(
        name="e",
        instance_type="g5.xlarge",
        models=[ModelSpec(name="nomic-embed-text", tag="v1.5", quantization="fp16", num_ctx=2048)],
        ollama=OllamaSettings(num_parallel=16),
    )
    for version in (TESTBED, CURRENT):
        model = capacity.estimate_node(g, ollama_version=version).models[0]
        assert model.num_parallel == 1
        assert model.kv_cache == 12 * 2048 * (64 + 64) * 12 * 2


def test_current_releases_keep_1024_mib_and_precheck_a_second_model():
    single = capacity.estimate_fit("llama3.1:8b", "q4_K_M", 8192, 4, "g5.xlarge", headroom=0, ollama_version=CURRENT)
    assert single.gpu_usage[0].margin == 1024 * MIB and single.models[0].layer_buffer == 0
    # Two 8B models with a long context on one L40S: the placement has room (q4_0 cache), but the
    # scheduler's prediction (file + f16 KV, head dim = embedding / heads) for the second one exceeds 80%
    # of what the first leaves free.
    g = NodeGroup(
        name="two",
        instance_type="g6e.xlarge",
        models=[
            ModelSpec(name="qwen3", tag="8b", quantization="q4_K_M", num_ctx=40960),
            ModelSpec(name="deepseek-r1", tag="8b", quantization="q4_K_M", num_ctx=40960),
        ],
        ollama=OllamaSettings(num_parallel=5, kv_cache_type="q4_0"),
    )
    estimate = capacity.estimate_node(g, headroom=0, ollama_version=CURRENT)
    # Batch 1024 (context 204800 > 32768, but the prediction exceeds 60% of the free memory), whose
    # surcharge of 768 MiB joins the prediction.
    predicted = 5_200_000_000 + 2 * 36 * 8 * 128 * 40960 * 5 * 2 + 768 * MIB
    assert estimate.model("qwen3:8b").predicted == predicted and estimate.model("qwen3:8b").batch == 1024
    assert all(u.fits for u in estimate.gpu_usage)
    assert not estimate.fits and any("80%" in p for p in estimate.problems)
    # The layout rules of v0.24.0 have no such pre-check.
    assert not any("80%" in p for p in capacity.estimate_node(g, headroom=0, ollama_version=TESTBED).problems)


# ---- plan suggestions are honoured and re-checked ---------------------------------------------------------------


def _apply(group: NodeGroup, suggestion: str) -> NodeGroup:
    key, _, change = suggestion.partition(": ")
    new = change.split(" → ")[1].split()[0]
    if key == "ollama.numParallel":
        return group.model_copy(update={"ollama": group.ollama.model_copy(update={"num_parallel": int(new)})})
    if key == "ollama.kvCacheType":
        return group.model_copy(update={"ollama": group.ollama.model_copy(update={"kv_cache_type": new, "flash_attention": True})})
    if key == "instanceType":
        return group.model_copy(update={"instance_type": new})
    field = {"numCtx": "num_ctx", "quantization": "quantization"}[change.split()[0]]
    value = int(new) if field == "num_ctx" else new
    models = [m.model_copy(update={field: value}) if m.ref == key else m for m in group.models]
    return group.model_copy(update={"models": models})


@pytest.mark.parametrize("version", [TESTBED, CURRENT])
@pytest.mark.parametrize(
    "model, quant, num_ctx, parallel",
    [("gemma2:9b", "q4_K_M", 8192, 6), ("llama3.1:8b", "q8_0", 16384, 6), ("qwen2.5:7b", "q4_K_M", 18944, 8)],
)
def test_every_suggestion_is_honoured_and_fits(version, model, quant, num_ctx, parallel):
    group = capacity.single_model_group(model, quant, num_ctx, parallel, "g5.xlarge")
    estimate = capacity.estimate_node(group, 0.10, ollama_version=version)
    if estimate.fits:  # nothing to change: nothing suggested
        assert not estimate.suggestions and not estimate.problems
        return
    changes = [s for s in estimate.suggestions if " → " in s]
    assert changes
    for suggestion in changes:
        if suggestion.startswith("ollama.kvCacheType"):
            assert capacity.supports_flash_attention(catalog.find_model(model)) or version == CURRENT, suggestion
        assert capacity.fits(_apply(group, suggestion), 0.10, ollama_version=version), suggestion


def test_no_quantized_cache_suggested_where_ollama_drops_it():
    group = capacity.single_model_group("gemma2:9b", "q4_K_M", 8192, 6, "g5.xlarge")
    estimate = capacity.estimate_node(group, 0.10, ollama_version=TESTBED)
    assert not estimate.fits and not any("kvCacheType" in s for s in estimate.suggestions)


# ---- CLI ------------------------------------------------------------------------------------------------------


def test_fit_json_names_the_rules_that_applied(capacity_cli):
    args = ["fit", "--model", "qwen2.5:7b", "--num-ctx", "18944", "--num-parallel", "8", "--instance", "g5.xlarge",
            "--headroom", "0", "--json"]
    old = json.loads(capacity_cli(*args, "--ollama-version", "0.24.0").output)
    assert (old["ollamaVersion"], old["ollamaRules"], old["fits"]) == ("0.24.0", "v0.15.5–v0.29", False)
    default = capacity_cli(*args)
    data = json.loads(default.output)
    assert data["ollamaVersion"] == capacity.default_ollama_version() and data["ollamaRules"] == "v0.30+"


def test_fit_refuses_an_unsupported_version(capacity_cli):
    result = capacity_cli("fit", "--model", "llama3.1:8b", "--instance", "g5.xlarge", "--ollama-version", "0.12.3")
    assert result.exit_code == 2 and "v0.13.1–v0.15.4" in result.output and "Traceback" not in result.output


def _stack_with_image(tmp_path, image: str):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    (tmp_path / "Pulumi.yaml").write_text((root / "Pulumi.yaml").read_text())
    text = (root / "Pulumi.prod.yaml").read_text()
    text = text.replace("    nodeGroups:\n", f"    images:\n      ollama: {image}\n    nodeGroups:\n", 1)
    (tmp_path / "Pulumi.test.yaml").write_text(text)
    return tmp_path


def test_plan_uses_the_release_of_the_stacks_image(capacity_cli, monkeypatch, tmp_path):
    monkeypatch.chdir(_stack_with_image(tmp_path, "ollama/ollama:0.24.0@sha256:" + "d" * 64))
    data = json.loads(capacity_cli("plan", "--stack", "test", "--json").output)
    assert (data["ollamaVersion"], data["ollamaRules"]) == ("0.24.0", "v0.15.5–v0.29")
    assert data["groups"][0]["ollamaRules"] == "v0.15.5–v0.29"


def test_plan_refuses_an_image_of_an_unsupported_release(capacity_cli, monkeypatch, tmp_path):
    monkeypatch.chdir(_stack_with_image(tmp_path, "ollama/ollama:0.12.0@sha256:" + "e" * 64))
    result = capacity_cli("plan", "--stack", "test")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Pulumi.test.yaml: images.ollama: Ollama 0.12.0 is not supported" in result.output
    assert "v0.30+" in result.output


@pytest.mark.parametrize("command", ["validate", "preview"])
def test_validate_and_preview_refuse_an_image_of_an_unsupported_release(monkeypatch, tmp_path, command):
    from typer.testing import CliRunner

    from fleet.cli import app

    monkeypatch.chdir(_stack_with_image(tmp_path, "ollama/ollama:0.12.0@sha256:" + "e" * 64))
    result = CliRunner().invoke(app, [command, "--stack", "test"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert "Pulumi.test.yaml: images.ollama: Ollama 0.12.0 is not supported" in result.output and "v0.30+" in result.output
