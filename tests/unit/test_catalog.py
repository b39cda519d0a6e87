"""Catalog data: complete, internally consistent, and plausible against how GGUF quantizations pack weights."""

from __future__ import annotations

import pytest

from fleet import catalog
from fleet.catalog import GIB, MIB
from fleet.config import ModelSpec

REQUIRED = {
    "llama3.1:8b", "llama3.1:70b", "llama3.2:1b", "llama3.2:3b", "llama3.3:70b", "qwen2.5:7b", "qwen2.5:14b",
    "qwen2.5:32b", "qwen2.5:72b", "qwen3:8b", "qwen3:32b", "mistral:7b", "mixtral:8x7b", "gemma2:9b", "gemma2:27b",
    "gemma3:12b", "gemma3:27b", "phi3:3.8b", "phi4:14b", "deepseek-r1:8b", "deepseek-r1:32b", "deepseek-r1:70b",
    "nomic-embed-text:v1.5", "smollm2:135m",
}

# Bits per weight a GGUF of each quantization has (file bytes × 8 / parameters): llama.cpp's block formats
# (q4_0 4.5, q4_1 5, q4_K ~4.5-4.9 with q6_K output, q5_K ~5.5-5.7, q8_0 8.5, f16 16) plus metadata,
# embeddings kept at higher precision and small vision towers. A typo in a size lands outside.
BITS_PER_WEIGHT = {
    "q4_0": (4.3, 5.1),
    "q4_1": (4.8, 6.0),
    "q4_K_M": (4.6, 5.5),
    "q5_K_M": (5.4, 6.1),
    "q8_0": (8.3, 8.8),
    "fp16": (15.5, 16.3),
}

MODELS = sorted(catalog.MODELS.values(), key=lambda m: m.ref)


def test_catalog_covers_the_popular_models():
    assert REQUIRED <= set(catalog.MODELS)
    assert len(catalog.MODELS) >= 16


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.ref)
def test_architecture_numbers_are_consistent(model):
    assert model.ref == f"{model.name}:{model.tag}"
    assert model.n_layer > 0 and model.n_embd > 0 and model.max_context >= 2048
    assert model.n_head % model.n_head_kv == 0  # grouped-query attention shares each KV head evenly
    assert model.head_dim in (64, 96, 128, 256)
    assert model.vocab_size > 1000 and model.n_ff > model.n_embd
    assert 0 <= model.sliding_window_layers < model.n_layer
    assert (model.sliding_window is None) == (model.sliding_window_layers == 0)
    assert model.source


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.ref)
def test_weight_sizes_are_plausible(model):
    assert model.weights
    for quantization, size in model.weights.items():
        low, high = BITS_PER_WEIGHT[quantization]
        bits = size * 8 / model.parameters
        assert low <= bits <= high, f"{model.ref} {quantization}: {bits:.2f} bits per weight"
    ordered = [model.weights[q] for q in catalog.QUANTIZATION_ORDER if q in model.weights]
    assert ordered == sorted(ordered)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.ref)
def test_every_quantization_has_a_pull_tag_and_validates(model):
    for quantization in model.weights:
        tag = model.pull_tag(quantization)
        assert tag.startswith(f"{model.name}:") and (quantization in tag or model.embedding)
        spec = ModelSpec(name=model.name, tag=model.tag, quantization=quantization, num_ctx=min(8192, model.max_context))
        assert spec.ref == model.ref


def test_head_dim_is_the_embedding_split_except_where_published_otherwise():
    explicit = {"qwen3:32b", "gemma2:9b", "gemma3:12b", "gemma3:27b", "gemma2:27b"}
    for model in MODELS:
        if model.ref not in explicit:
            assert model.head_dim * model.n_head == model.n_embd, model.ref


def test_sliding_window_patterns():
    assert catalog.find_model("gemma2:27b").sliding_window_layers == 46 // 2
    assert catalog.find_model("gemma3:27b").sliding_window_layers == 62 - 62 // 6
    assert catalog.find_model("gemma3:12b").sliding_window == 1024


@pytest.mark.parametrize(
    "name, gpus, reported_mib, reserved_mib, gpu",
    [
        # `nvidia-smi -q` FB Memory Usage on idle GPUs: Total and Reserved (MiB)
        ("g4dn.xlarge", 1, 15360, 393, "T4"),
        ("g5.xlarge", 1, 23028, 526, "A10G"),
        ("g5.12xlarge", 4, 23028, 526, "A10G"),
        ("g5.48xlarge", 8, 23028, 526, "A10G"),
        ("g6.xlarge", 1, 23034, 556, "L4"),
        ("g6e.xlarge", 1, 46068, 685, "L40S"),
        ("p4d.24xlarge", 8, 40960, 620, "A100 40GB"),
        ("p4de.24xlarge", 8, 81920, 834, "A100 80GB"),
        ("p5.48xlarge", 8, 81559, 551, "H100"),
        ("p5e.48xlarge", 8, 143771, 700, "H200"),
    ],
)
def test_instances_carry_the_memory_the_driver_reports(name, gpus, reported_mib, reserved_mib, gpu):
    instance = catalog.find_instance(name)
    assert (instance.gpus, instance.vram_per_gpu, instance.gpu_model) == (gpus, reported_mib * MIB, gpu)
    assert instance.total_vram == gpus * reported_mib * MIB
    assert instance.free_per_gpu == (reported_mib - reserved_mib) * MIB


def test_reported_memory_is_below_the_marketing_size():
    # A10G "24 GB" reports 23028 MiB: 10% headroom of the marketing size is only ~4% of what is there.
    a10g = catalog.find_instance("g5.xlarge")
    assert a10g.vram_per_gpu < 24 * GIB and 1 - 0.9 * 24 * GIB / a10g.vram_per_gpu < 0.05


def test_local_cpu_has_no_gpu():
    local = catalog.find_instance(catalog.LOCAL_INSTANCE)
    assert local.gpus == 0 and local.total_vram == 0
