"""GGUF files whose headers leave keys out are read as Ollama reads them (v0.24.0 fs/ggml/ggml.go KV accessors and
llm/server.go), not with defaults of our own that would shrink the estimate."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf_files import write_out

from fleet import capacity
from fleet.config import ModelSpec, NodeGroup, OllamaSettings
from fleet.gguf_arch import read_arch

LAYERS, EMBD, HEADS = 8, 256, 4


def write_gguf(path, *, context_length: int | None, key_length: int | None, value_length: int | None):
    """A small llama-architecture file with real tensors; keys left out when None."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("general.file_type", 1)
    writer.add_block_count(LAYERS)
    if context_length is not None:
        writer.add_context_length(context_length)
    writer.add_embedding_length(EMBD)
    writer.add_feed_forward_length(512)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    if key_length is not None:
        writer.add_key_length(key_length)
    if value_length is not None:
        writer.add_value_length(value_length)
    writer.add_token_list([f"t{i}" for i in range(64)])
    tensors = {"token_embd.weight": np.zeros((64, EMBD), dtype=np.float16)}
    for i in range(LAYERS):
        tensors[f"blk.{i}.attn_norm.weight"] = np.zeros(EMBD, dtype=np.float32)
        tensors[f"blk.{i}.attn_q.weight"] = np.zeros((EMBD, EMBD), dtype=np.float16)
    tensors["output_norm.weight"] = np.zeros(EMBD, dtype=np.float32)
    write_out(writer, tensors)
    return path


def group(path, num_ctx: int, kv: str = "f16", parallel: int = 1) -> NodeGroup:
    return NodeGroup(
        name="custom",
        instance_type="g5.xlarge",
        models=[ModelSpec(name="custom", tag="v1", gguf=str(path), num_ctx=num_ctx)],
        ollama=OllamaSettings(num_parallel=parallel, kv_cache_type=kv, flash_attention=True),
    )


@pytest.mark.parametrize("version", ["0.24.0", "0.32.15"])
def test_a_file_without_a_trained_context_is_not_clamped(tmp_path, version):
    # Ollama clamps numCtx to <arch>.context_length only when the file has one (llm/server.go:167-171).
    path = write_gguf(tmp_path / "no-context.gguf", context_length=None, key_length=None, value_length=None)
    assert read_arch(path).max_context == 0
    estimate = capacity.estimate_node(group(path, 1_048_576, parallel=2), 0.1, ollama_version=version)
    model = estimate.models[0]
    assert model.num_ctx == 1_048_576
    # 8 layers × (64 + 64) × 4 KV heads × 2 bytes per token, for 2 × 1,048,576 tokens: 16 GiB of f16 cache.
    assert model.kv_cache == LAYERS * 128 * HEADS * 2 * 2 * 1_048_576
    # It does not fit an A10G, and what to change names the model as the stack file does (custom:v1).
    assert not estimate.fits and model.ref == "custom:v1"
    assert any(s.startswith("custom:v1: numCtx 1048576 → ") for s in estimate.suggestions), estimate.suggestions
    # With a trained context in the file, it is the limit.
    capped = write_gguf(tmp_path / "context.gguf", context_length=4096, key_length=None, value_length=None)
    assert capacity.estimate_node(group(capped, 1_048_576), 0.1, ollama_version=version).models[0].num_ctx == 4096


def test_value_heads_default_to_embedding_over_heads_and_turn_flash_attention_off(tmp_path):
    # key_length 128 given, value_length left out: V heads are 256 / 4 = 64, K ≠ V, so Ollama v0.24.0 runs
    # without flash attention and the q4_0 cache falls back to f16 (fs/ggml/ggml.go:868-887).
    path = write_gguf(tmp_path / "k-only.gguf", context_length=8192, key_length=128, value_length=None)
    arch = read_arch(path)
    assert (arch.head_dim, arch.value_dim) == (128, 64)
    model = capacity.estimate_node(group(path, 8192, kv="q4_0", parallel=4), 0.1, ollama_version="0.24.0").models[0]
    assert (model.flash_attention, model.kv_cache_type) == (False, "f16")
    assert model.kv_cache == LAYERS * (128 + 64) * HEADS * 2 * 8192 * 4
    both = read_arch(write_gguf(tmp_path / "k-and-v.gguf", context_length=8192, key_length=128, value_length=128))
    assert (both.head_dim, both.value_dim) == (128, 128) and capacity.supports_flash_attention(both)
