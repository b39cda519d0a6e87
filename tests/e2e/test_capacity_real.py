"""The capacity estimate against the real Ollama v0.24.0 for a model with its own output matrix.

SmolLM2 ties its output to the token embedding, so it cannot show the term that matters for most models:
Ollama leaves an untied `token_embd` out of what it places (llm/server.go:583-593) while the output matrix
is placed as a layer of its own. This test writes a small llama-architecture GGUF with an untied output
(random f16 weights, 4 MB) with the `gguf` package, loads it in the test bed's Ollama on CPU, and compares
`/api/ps` size and the server log's memory lines with fleet.capacity's terms.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from fleet import capacity
from fleet.gguf_arch import read_arch
from fleet.local.memory_probe import probe_matrix

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LAYERS, EMBD, HEADS, KV_HEADS, FF, VOCAB = 4, 256, 4, 2, 512, 512
HEAD_DIM = EMBD // HEADS
LOG_ROUNDING = 0.05 * 1024**2  # Ollama logs sizes to 0.1 MiB


def write_untied_llama(path: Path) -> Path:
    """A loadable llama GGUF: SentencePiece-style vocabulary (3 specials, 256 byte tokens, plain tokens)."""
    rng = np.random.default_rng(7)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float16)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("untied-test")
    writer.add_block_count(LAYERS)
    writer.add_context_length(4096)
    writer.add_embedding_length(EMBD)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"\u2581w{i}" for i in range(VOCAB - len(tokens))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (VOCAB - len(types))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(VOCAB - 259)])
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_tensor("token_embd.weight", weights(VOCAB, EMBD))
    for i in range(LAYERS):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(EMBD, dtype=np.float32))
        writer.add_tensor(p + "attn_q.weight", weights(HEADS * HEAD_DIM, EMBD))
        writer.add_tensor(p + "attn_k.weight", weights(KV_HEADS * HEAD_DIM, EMBD))
        writer.add_tensor(p + "attn_v.weight", weights(KV_HEADS * HEAD_DIM, EMBD))
        writer.add_tensor(p + "attn_output.weight", weights(EMBD, HEADS * HEAD_DIM))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(EMBD, dtype=np.float32))
        writer.add_tensor(p + "ffn_gate.weight", weights(FF, EMBD))
        writer.add_tensor(p + "ffn_up.weight", weights(FF, EMBD))
        writer.add_tensor(p + "ffn_down.weight", weights(EMBD, FF))
    writer.add_tensor("output_norm.weight", np.ones(EMBD, dtype=np.float32))
    writer.add_tensor("output.weight", weights(VOCAB, EMBD))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_untied_model_measured_by_a_real_ollama(ollama_binary, tmp_path):
    path = write_untied_llama(tmp_path / "untied.gguf")
    arch = read_arch(path)
    assert not arch.tied_embeddings and arch.token_embd_bytes["fp16"] == VOCAB * EMBD * 2
    rows = probe_matrix(ollama_binary, (1024, 4096), (1, 2), gguf=path, model="untied-test", workdir=tmp_path)
    assert len(rows) == 4
    for row in rows:
        # On the GPU path the estimate counts every layer and the output matrix, not token_embd: the
        # figures Ollama's layout accounts (on CPU they sit in the CPU entry, no graph is reserved there).
        estimate = capacity.estimate_model(arch, "fp16", row["num_ctx"], row["num_parallel"], "f16",
                                           flash_attention=False, ollama_version="0.24.0")
        print(f"ctx {row['num_ctx']} × {row['num_parallel']}: /api/ps size {row['ps_size']}, "
              f"estimate weights {estimate.weights} + KV {estimate.kv_cache} = {estimate.weights + estimate.kv_cache}; "
              f"log weights {row.get('ollama_weights')} kv {row.get('ollama_kv_cache')}; "
              f"llama.cpp model buffer {row.get('llamacpp_model_buffer')}")
        assert estimate.kv_cache == row["ollama_kv_cache"] == 2 * LAYERS * row["num_ctx"] * row["num_parallel"] * KV_HEADS * HEAD_DIM * 2
        assert abs(estimate.weights - row["ollama_weights"]) <= LOG_ROUNDING
        assert row["ps_size"] == estimate.weights + estimate.kv_cache
        # llama.cpp itself holds token_embd too (in system memory): its buffer exceeds the placed weights by it.
        assert abs(row["llamacpp_model_buffer"] - (estimate.weights + arch.token_embd_bytes["fp16"])) <= 0.01 * row["llamacpp_model_buffer"]
