"""The C/C++ flags the Ollama build uses on this CPU, and the cache key that ties a binary to them.

A `go install` of Ollama compiles ggml with Go's default cgo flags (`-O2 -g`, baseline x86-64: SSE2 only),
so every SIMD path in ggml's CPU backend is compiled out: ggml chooses its kernels at compile time from the
compiler's predefined macros (`__AVX2__`, `__FMA__`, `__F16C__`, `__AVX512F__`, … in
ml/backend/ggml/ggml/src/ggml-cpu at Ollama v0.24.0). This module turns the CPU's own feature list into the
matching `-m` options, keeps only those the compiler accepts, and names the set in the cache key so that a
cached binary is never run on a CPU that lacks one of them (a different set is a different cache folder).

Stdlib only: scripts/build-ollama.sh runs before the virtualenv has its packages.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

# x86 /proc/cpuinfo flag -> gcc option, in the order of the ISA levels. Only the extensions ggml's x86 code
# tests for (and what they build on), so an unrelated flag never changes the cache key.
X86_OPTIONS = {
    "pni": "-msse3",
    "ssse3": "-mssse3",
    "sse4_1": "-msse4.1",
    "sse4_2": "-msse4.2",
    "popcnt": "-mpopcnt",
    "avx": "-mavx",
    "f16c": "-mf16c",
    "fma": "-mfma",
    "bmi2": "-mbmi2",
    "avx2": "-mavx2",
    "avx_vnni": "-mavxvnni",
    "avx512f": "-mavx512f",
    "avx512cd": "-mavx512cd",
    "avx512dq": "-mavx512dq",
    "avx512bw": "-mavx512bw",
    "avx512vl": "-mavx512vl",
    "avx512vbmi": "-mavx512vbmi",
    "avx512_vnni": "-mavx512vnni",
    "avx512_bf16": "-mavx512bf16",
}
# aarch64 /proc/cpuinfo feature -> -march extension (ggml tests __ARM_FEATURE_DOTPROD, _FP16_VECTOR_ARITHMETIC,
# _MATMUL_INT8, _SVE).
ARM_EXTENSIONS = {"asimddp": "dotprod", "asimdhp": "fp16", "i8mm": "i8mm", "sve": "sve"}

# Go's default CGO_CFLAGS are "-O2 -g": the binary is stripped (-ldflags -s -w), so debug info is compile time
# for nothing. ggml-cpu's own `#cgo CFLAGS: -O3` still comes after these and wins for that package.
OPTIMISATION = ("-O2",)


@dataclass(frozen=True)
class BuildProfile:
    """What the compiler is told about the CPU; `key` names the cache folder of binaries built with it."""

    machine: str
    isa_options: tuple[str, ...]

    @property
    def cflags(self) -> str:
        return " ".join((*OPTIMISATION, *self.isa_options))

    @property
    def key(self) -> str:
        digest = hashlib.sha256(f"{self.machine} {self.cflags}".encode()).hexdigest()[:10]
        return f"{self.machine}-{self.label}-{digest}"

    @property
    def label(self) -> str:
        """The widest vector extension, for people reading the cache folder's name."""
        words = {w for option in self.isa_options for w in re.split(r"[-+=]", option) if w}
        for word, name in (("mavx512f", "avx512"), ("mavx2", "avx2"), ("mavx", "avx"), ("msse4.2", "sse4"),
                           ("sve", "sve"), ("dotprod", "dotprod")):
            if word in words:
                return name
        return "baseline"

    def to_json(self) -> str:
        return json.dumps({"machine": self.machine, "cflags": self.cflags, "key": self.key}, indent=2) + "\n"


def cpu_features(cpuinfo: str) -> set[str]:
    """Features every processor listed has (x86 `flags`, aarch64 `Features`); a mixed machine gets the common set."""
    sets = [set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines()
            if line.split(":", 1)[0].strip() in ("flags", "Features") and ":" in line]
    return set.intersection(*sets) if sets else set()


def wanted_options(machine: str, features: set[str]) -> tuple[str, ...]:
    if machine in ("x86_64", "amd64"):
        return tuple(option for flag, option in X86_OPTIONS.items() if flag in features)
    if machine in ("aarch64", "arm64"):
        extensions = [ext for feature, ext in ARM_EXTENSIONS.items() if feature in features]
        return (f"-march=armv8.2-a+{'+'.join(extensions)}",) if extensions else ()
    return ()


def compiler_accepts(options: tuple[str, ...], compiler: str = "gcc") -> bool:
    if not options:
        return True
    try:
        proc = subprocess.run([compiler, *options, "-x", "c", "-c", "-o", "/dev/null", "-"], input="int x;\n",
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def detect(cpuinfo_path: Path = Path("/proc/cpuinfo"), machine: str | None = None) -> BuildProfile:
    """The profile for this machine: its CPU's extensions that both gcc and g++ accept (an older compiler may not
    know the newest ones; those are left out, one by one)."""
    machine = machine or platform.machine()
    try:
        features = cpu_features(cpuinfo_path.read_text())
    except OSError:
        features = set()
    options = wanted_options(machine, features)
    if not (compiler_accepts(options) and compiler_accepts(options, "g++")):
        options = tuple(o for o in options if compiler_accepts((o,)) and compiler_accepts((o,), "g++"))
    return BuildProfile(machine=machine, isa_options=options)
