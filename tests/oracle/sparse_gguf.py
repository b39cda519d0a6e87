"""GGUF files with a catalog model's exact metadata and tensor shapes but no tensor data on disk.

The header (metadata and tensor table) is written for real with the `gguf` package; the data region is
made by truncating the file to its full length, so the file system stores it as a hole: a 70B model costs
a few megabytes of header. Tensor types follow the quantization's main type, with the output projection
(or the tied token embedding that serves as output) in q6_K for 4- to 6-bit files, as llama.cpp's
quantizer stores it.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np

from fleet.catalog import ModelArch

Q = gguf.GGMLQuantizationType
MAIN_TYPE = {"q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q4_K_M": Q.Q4_K, "q5_K_M": Q.Q5_K, "q6_K": Q.Q6_K, "q8_0": Q.Q8_0, "fp16": Q.F16}
OUTPUT_TYPE = {**{q: Q.Q6_K for q in ("q4_0", "q4_1", "q4_K_M", "q5_K_M", "q6_K")}, "q8_0": Q.Q8_0, "fp16": Q.F16}
FILE_TYPE = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q4_K_M": 15, "q5_K_M": 17, "q6_K": 18, "fp16": 1}
ALIGNMENT = 32


def _nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * type_size


def tensors(arch: ModelArch, quantization: str) -> list[tuple[str, tuple[int, ...], Q]]:
    """(name, numpy-order shape, type) of every tensor of a model in the layout llama.cpp writes for its
    architecture: llama/mistral/mixtral, qwen2 (QKV biases), gemma2 (post-norms), phi3 (fused QKV and
    gate/up), the Ollama-engine families (qwen3 Q/K norms, gemma3), nomic-bert (fused QKV, no gate)."""
    main, out_type, f32 = MAIN_TYPE[quantization], OUTPUT_TYPE[quantization], Q.F32
    e, h, hkv, hd, ff, v = arch.n_embd, arch.n_head, arch.n_head_kv, arch.head_dim, arch.n_ff, arch.vocab_size
    vd = arch.value_dim or hd
    family = arch.arch
    items: list[tuple[str, tuple[int, ...], Q]] = [("token_embd.weight", (v, e), out_type if arch.tied_embeddings else main)]
    for i in range(arch.n_layer):
        p = f"blk.{i}."
        items.append((p + "attn_norm.weight", (e,), f32))
        if family in ("phi3", "nomic-bert"):
            items.append((p + "attn_qkv.weight", (h * hd + 2 * hkv * hd, e), main))
        else:
            items += [(p + "attn_q.weight", (h * hd, e), main), (p + "attn_k.weight", (hkv * hd, e), main), (p + "attn_v.weight", (hkv * vd, e), main)]
        if family == "qwen2":
            items += [(p + "attn_q.bias", (h * hd,), f32), (p + "attn_k.bias", (hkv * hd,), f32), (p + "attn_v.bias", (hkv * vd,), f32)]
        if family in ("qwen3", "gemma3"):
            items += [(p + "attn_q_norm.weight", (hd,), f32), (p + "attn_k_norm.weight", (hd,), f32)]
        items.append((p + "attn_output.weight", (e, h * vd), main))
        if family in ("gemma2", "gemma3"):
            items += [(p + "post_attention_norm.weight", (e,), f32), (p + "post_ffw_norm.weight", (e,), f32)]
        items.append((p + "ffn_norm.weight", (e,), f32))
        if arch.n_expert:
            items += [
                (p + "ffn_gate_inp.weight", (arch.n_expert, e), f32),
                (p + "ffn_gate_exps.weight", (arch.n_expert, ff, e), main),
                (p + "ffn_up_exps.weight", (arch.n_expert, ff, e), main),
                (p + "ffn_down_exps.weight", (arch.n_expert, e, ff), main),
            ]
        elif family == "phi3":
            items += [(p + "ffn_up.weight", (2 * ff, e), main), (p + "ffn_down.weight", (e, ff), main)]
        elif family == "nomic-bert":
            items += [(p + "ffn_up.weight", (ff, e), main), (p + "ffn_gate.weight", (ff, e), main), (p + "ffn_down.weight", (e, ff), main)]
        else:
            items += [(p + "ffn_gate.weight", (ff, e), main), (p + "ffn_up.weight", (ff, e), main), (p + "ffn_down.weight", (e, ff), main)]
    items.append(("output_norm.weight", (e,), f32))
    if not arch.tied_embeddings and not arch.embedding:
        items.append(("output.weight", (v, e), out_type))
    return items


def write_sparse_gguf(path: Path, arch: ModelArch, quantization: str) -> Path:
    """Write `arch` at `quantization` to `path`: a real header, the tensor data as a hole."""
    name = arch.arch
    writer = gguf.GGUFWriter(str(path), name)
    writer.add_uint32("general.file_type", FILE_TYPE[quantization])
    writer.add_block_count(arch.n_layer)
    writer.add_context_length(arch.max_context)
    writer.add_embedding_length(arch.n_embd)
    writer.add_feed_forward_length(arch.n_ff)
    writer.add_head_count(arch.n_head)
    writer.add_head_count_kv(arch.n_head_kv)
    writer.add_key_length(arch.head_dim)
    writer.add_value_length(arch.value_dim or arch.head_dim)
    if arch.sliding_window:
        writer.add_sliding_window(arch.sliding_window)
    if arch.n_expert:
        writer.add_expert_count(arch.n_expert)
        writer.add_expert_used_count(2)
    if arch.embedding:
        writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_token_list([f"t{i}" for i in range(arch.vocab_size)])
    total = 0
    for tensor_name, shape, qtype in tensors(arch, quantization):
        nbytes = _nbytes(shape, qtype)
        writer.add_tensor_info(tensor_name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        total += -(-nbytes // ALIGNMENT) * ALIGNMENT
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    header = path.stat().st_size
    data_start = -(-header // ALIGNMENT) * ALIGNMENT
    os.truncate(path, data_start + total)
    return path
