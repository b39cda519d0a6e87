"""Which of Ollama's memory rules apply to a given Ollama release.

Ollama changed how it decides that a model fits twice in the releases this project deploys; one formula
cannot be right for all of them. Each range below was read from Ollama's source at the tags named:

* **v0.13.1–v0.15.4** — Ollama places whole layers itself (`llm/server.go` `llamaServer.Load` and
  `buildLayout`/`assignLayers`, v0.15.4 lines 600–700): per GPU it keeps `MinimumMemory()` = 457 MiB
  (`ml/device.go:352`), `OLLAMA_GPU_OVERHEAD`, one layer (`blk.0` + its KV) and max(partial, full) compute
  graph from `fs/ggml/ggml.go` `GraphSize` free. The default context is a flat 4096 tokens
  (`envconfig/config.go:293`, OLLAMA_CONTEXT_LENGTH's default).
* **v0.15.5–v0.29** — the same placement (v0.24.0 `llm/server.go:531-700`, `ml/device.go:353`); the
  default context follows the total VRAM the GPUs report (v0.24.0 `server/routes.go:1899-1914`:
  ≥ 47 GiB → 262144, ≥ 23 GiB → 32768, else 4096). v0.24.0 is the last tag before v0.30.0.
* **v0.30+** — every GGUF model runs on upstream llama-server, started with `-c num_ctx×num_parallel
  -np num_parallel` and the KV cache type and flash attention passed through (v0.32.15
  `llm/llama_server.go:371-420`, `LlamaServerFlashAttention` 597-611); llama.cpp's `--fit` places the
  layers and leaves 1024 MiB free on each GPU; before starting a model next to loaded ones the scheduler
  refuses it when `PredictServerVRAM` (file size + an f16 KV cache, `llm/llama_server.go:2681-2700`)
  exceeds 80% of the free memory (`server/sched.go:546-551`).

In all three, embedding models load with num_parallel 1 (v0.24.0 `server/sched.go:414-417`).
Releases before v0.13.1 ran nomic-bert on the llama.cpp runner and are not modelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from fractions import Fraction

MIB = 1024**2

Version = tuple[int, int, int]


class OllamaVersionError(ValueError):
    """A version (or image reference) whose memory rules this project does not model."""


# Architectures Ollama serves with its own engine in v0.13.1-v0.29 (v0.24.0 fs/ggml/ggml.go:277-303
# `OllamaEngineRequired`; the catalog's architectures are the same in every tag of the range).
OLLAMA_ENGINE_ARCHS_V0_24 = frozenset(
    {
        "bert", "deepseek2", "deepseekocr", "gemma3", "gemma3n", "gemma4", "gptoss", "gpt-oss", "laguna",
        "llama4", "mistral3", "mllama", "nemotron_h", "nemotron_h_moe", "nemotron_h_omni", "nomic-bert",
        "olmo3", "qwen25vl", "qwen3", "qwen3moe", "qwen35", "qwen35moe", "qwen3next", "qwen3vl", "qwen3vlmoe",
        "glm4moelite", "glmocr", "lfm2", "lfm2moe",
    }
)

# Bytes per KV element in Ollama's own estimate (v0.24.0 fs/ggml/ggml.go:911-922 kvCacheBytesPerElement),
# which is what its layout uses for models on the llama.cpp runner.
OLLAMA_ESTIMATE_KV_BYTES: dict[str, Fraction] = {"f16": Fraction(2), "q8_0": Fraction(1), "q4_0": Fraction(1, 2)}
# Bytes per KV element that ggml really allocates (block sizes: q8_0 34 B / 32, q4_0 18 B / 32).
GGML_KV_BYTES: dict[str, Fraction] = {"f16": Fraction(2), "q8_0": Fraction(34, 32), "q4_0": Fraction(18, 32)}


@dataclass(frozen=True)
class OllamaRules:
    """The memory rules of one range of Ollama releases (see the module docstring for the sources)."""

    name: str  # the range, e.g. "v0.15.5–v0.29"
    low: Version
    high: Version | None  # inclusive; None = open-ended
    tiered_default_context: bool  # VRAM-tiered default context (else a flat 4096)
    layout: str  # "ollama" (Ollama places layers: llm/server.go) or "llama-server-fit" (llama.cpp --fit)
    gpu_reserve: int  # bytes kept free per GPU besides the graph: MinimumMemory or the fit target
    layer_buffer: bool  # one layer (blk.0 + its KV) kept free per GPU while placing (llama.cpp runner)
    flash_attention_fallback: bool  # Ollama turns flash attention off for models that do not support it
    ollama_engine_archs: frozenset[str]  # architectures on Ollama's own engine (empty: all on llama.cpp)
    precheck_share: float | None  # scheduler pre-check: a model joining loaded ones needs predicted ≤ share × free

    def contains(self, version: Version) -> bool:
        return self.low <= version and (self.high is None or version <= self.high)

    def engine(self, arch: str) -> str:
        """`ollama` (Ollama's own engine) or `llama.cpp` for a GGUF architecture under these rules."""
        return "ollama" if arch in self.ollama_engine_archs else "llama.cpp"

    def placement_kv_bytes(self, engine: str) -> dict[str, Fraction]:
        """KV bytes per element the placement counts: Ollama's estimate for its llama.cpp runner layout,
        what ggml allocates everywhere else (Ollama's engine measures; llama.cpp's fit allocates)."""
        if self.layout == "ollama" and engine == "llama.cpp":
            return OLLAMA_ESTIMATE_KV_BYTES
        return GGML_KV_BYTES

    def describe(self) -> str:
        where = "Ollama places layers (llm/server.go)" if self.layout == "ollama" else "llama-server --fit"
        ctx = "VRAM-tiered default context" if self.tiered_default_context else "default context 4096"
        return f"Ollama {self.name}: {where}, {ctx}"


_OLLAMA_PLACES_LAYERS = OllamaRules(
    name="v0.13.1–v0.15.4",
    low=(0, 13, 1),
    high=(0, 15, 4),
    tiered_default_context=False,
    layout="ollama",
    gpu_reserve=457 * MIB,
    layer_buffer=True,
    flash_attention_fallback=True,
    ollama_engine_archs=OLLAMA_ENGINE_ARCHS_V0_24,
    precheck_share=None,
)

RULES: tuple[OllamaRules, ...] = (
    _OLLAMA_PLACES_LAYERS,
    # The same placement; only the default context changed (VRAM-tiered).
    replace(_OLLAMA_PLACES_LAYERS, name="v0.15.5–v0.29", low=(0, 15, 5), high=(0, 29, 999), tiered_default_context=True),
    OllamaRules(
        name="v0.30+",
        low=(0, 30, 0),
        high=None,
        tiered_default_context=True,
        layout="llama-server-fit",
        gpu_reserve=1024 * MIB,
        layer_buffer=False,
        flash_attention_fallback=False,
        ollama_engine_archs=frozenset(),
        precheck_share=0.8,
    ),
)

SUPPORTED = ", ".join(r.name for r in RULES)

# A release (`0.24.0`, `v0.24.0`), a pre-release of one (`0.33.0-rc1`), or a minor series (`0.32`) whose every
# release falls under the same rules.
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:-rc\d+)?$")
# An image tag: the release, then optionally one of the variants Ollama publishes (`0.32.15-rocm`).
_IMAGE_TAG = re.compile(r"^(?P<release>v?\d+\.\d+(?:\.\d+)?(?:-rc\d+)?)(?:-(?P<variant>rocm))?$")
# Variants of the image that do not run on the NVIDIA GPUs of the catalog's instance types, and why.
GPU_VARIANTS = {"rocm": "the AMD ROCm build, which does not use NVIDIA GPUs (Ollama would run every model on the CPU)"}


def parse_version(text: str) -> Version:
    """`0.24.0`, `v0.24.0`, `0.33.0-rc1` or `0.32` as a comparable (major, minor, patch). A minor series without
    its patch is taken only when all its releases fall under the same rules (`0.15` does not: 0.15.5 changed the
    default context)."""
    match = _VERSION.match(text.strip())
    if not match:
        raise OllamaVersionError(f"{text!r} is not an Ollama version (expected e.g. 0.24.0); supported: {SUPPORTED}")
    major, minor, patch = match.groups()
    if patch is None:
        first, last = (int(major), int(minor), 0), (int(major), int(minor), 999)
        if _rules_at(first) is not _rules_at(last):
            raise OllamaVersionError(
                f"{text!r} names a series of releases under different memory rules; name the release "
                f"(e.g. {major}.{minor}.0); supported: {SUPPORTED}"
            )
    return int(major), int(minor), int(patch or 0)


def _rules_at(version: Version) -> "OllamaRules | None":
    return next((rules for rules in RULES if rules.contains(version)), None)


def _image_tag(image_ref: str) -> str:
    name = image_ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        raise OllamaVersionError(f"image {image_ref!r} has no version tag; tag it with the Ollama release, e.g. ollama/ollama:0.32.15")
    return last.split(":", 1)[1]


def ollama_version_of(image_ref: str) -> str:
    """The Ollama version an image reference deploys: the tag of `ollama/ollama:0.32.15@sha256:…` (a variant
    tag such as `0.32.15-rocm` carries the release first)."""
    tag = _image_tag(image_ref)
    match = _IMAGE_TAG.match(tag)
    if not match:
        raise OllamaVersionError(
            f"image {image_ref!r}: tag {tag!r} is not an Ollama release version (allowed: a release such as 0.32.15, "
            f"optionally -rcN or -rocm); supported: {SUPPORTED}"
        )
    release = match.group("release").lstrip("v")
    parse_version(release)
    return release


def image_variant(image_ref: str) -> str | None:
    """The variant of an Ollama image (`rocm` for `ollama/ollama:0.32.15-rocm`), None for the main (CUDA) build."""
    try:
        match = _IMAGE_TAG.match(_image_tag(image_ref))
    except OllamaVersionError:
        return None
    return match.group("variant") if match else None


def rules_for(version: str | Version) -> OllamaRules:
    """The memory rules of an Ollama release; a clear error naming the supported ranges otherwise."""
    parsed = parse_version(version) if isinstance(version, str) else version
    for rules in RULES:
        if rules.contains(parsed):
            return rules
    shown = ".".join(map(str, parsed))
    raise OllamaVersionError(f"Ollama {shown} is not supported by the capacity model; supported: {SUPPORTED}")


def variant_problem(image_ref: str, gpus: int) -> str | None:
    """Why an Ollama image cannot serve a host with `gpus` NVIDIA GPUs (None when it can): its variant."""
    variant = image_variant(image_ref)
    if gpus and variant in GPU_VARIANTS:
        return (
            f"{image_ref} is {GPU_VARIANTS[variant]}; allowed on NVIDIA GPU instance types: the main image, "
            f"ollama/ollama:<release>@sha256:<digest>"
        )
    return None
