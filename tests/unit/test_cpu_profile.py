"""The Ollama build's CPU profile: which -m options a CPU's feature list gives, and the cache key they name."""

from __future__ import annotations

import shutil

import pytest

from fleet.local import cpu_profile
from fleet.local.cpu_profile import BuildProfile

AVX2_HOST = "processor\t: 0\nflags\t\t: fpu sse sse2 pni ssse3 fma sse4_1 sse4_2 popcnt avx f16c bmi1 avx2 bmi2 aes\n"


def _cpuinfo(*flag_lines: str) -> str:
    return "\n".join(f"processor\t: {i}\nflags\t\t: {flags}\n" for i, flags in enumerate(flag_lines))


def test_x86_features_map_to_the_options_ggml_tests_for():
    options = cpu_profile.wanted_options("x86_64", cpu_profile.cpu_features(AVX2_HOST))
    assert options == ("-msse3", "-mssse3", "-msse4.1", "-msse4.2", "-mpopcnt", "-mavx", "-mf16c", "-mfma",
                       "-mbmi2", "-mavx2")
    # flags ggml never looks at (aes, bmi1) do not become options, so they never change the cache key
    assert not any("aes" in o or "bmi1" in o for o in options)


def test_a_machine_with_mixed_cpus_gets_only_the_common_extensions():
    info = _cpuinfo("sse2 pni avx avx2 avx512f", "sse2 pni avx")
    assert cpu_profile.wanted_options("x86_64", cpu_profile.cpu_features(info)) == ("-msse3", "-mavx")


def test_arm_features_become_march_extensions():
    info = "processor\t: 0\nFeatures\t: fp asimd asimddp asimdhp i8mm\n"
    assert cpu_profile.wanted_options("aarch64", cpu_profile.cpu_features(info)) == ("-march=armv8.2-a+dotprod+fp16+i8mm",)
    assert cpu_profile.wanted_options("aarch64", {"fp", "asimd"}) == ()
    assert cpu_profile.wanted_options("riscv64", {"avx2"}) == ()


def test_the_cache_key_changes_with_any_extension_and_names_the_widest():
    avx2 = BuildProfile("x86_64", ("-mavx", "-mfma", "-mavx2"))
    without_fma = BuildProfile("x86_64", ("-mavx", "-mavx2"))
    avx512 = BuildProfile("x86_64", ("-mavx", "-mavx2", "-mavx512f"))
    keys = {avx2.key, without_fma.key, avx512.key, BuildProfile("x86_64", ()).key}
    assert len(keys) == 4
    assert avx2.key.startswith("x86_64-avx2-") and avx512.key.startswith("x86_64-avx512-")
    assert BuildProfile("x86_64", ()).key.startswith("x86_64-baseline-")
    assert BuildProfile("aarch64", ("-march=armv8.2-a+dotprod",)).label == "dotprod"
    assert avx2.key == BuildProfile("x86_64", ("-mavx", "-mfma", "-mavx2")).key  # stable across runs
    assert avx2.cflags == "-O2 -mavx -mfma -mavx2"  # no -g: the binary is stripped


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None, reason="needs gcc and g++")
def test_options_the_compiler_rejects_are_left_out(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(AVX2_HOST)
    assert cpu_profile.compiler_accepts(("-mavx2",)) and not cpu_profile.compiler_accepts(("-mnot-an-extension",))
    profile = cpu_profile.detect(info, machine="x86_64")
    assert profile.isa_options[-1] == "-mavx2" and "-mfma" in profile.isa_options


def test_detect_on_an_unreadable_cpuinfo_builds_for_the_baseline(tmp_path):
    profile = cpu_profile.detect(tmp_path / "absent", machine="x86_64")
    assert profile.isa_options == () and profile.label == "baseline"
