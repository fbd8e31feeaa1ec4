"""Kernel choice from the CPU's flags under oneDNN's and ATen's caps."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from minilm_npu.engine import cpu_kernels, policy
from minilm_npu.engine.cpu_kernels import (
    aten_capability,
    bfloat16_isa,
    cap_summary,
    effective_flags,
    float32_isa,
    int8_isa,
    isa_summary,
    kernel_plan,
    onednn_bfloat16_supported,
    onednn_isa,
)

# /proc/cpuinfo flags of the CPU classes this project meets (the ones the kernels care about).
ZEN3 = frozenset({"sse4_1", "sse4_2", "avx", "avx2", "fma"})
ZEN4 = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"avx_vnni", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"}
NO_CAP = "DEFAULT"


def test_kernels_follow_the_flags_of_the_cpu_that_loads_the_model():
    assert int8_isa(ZEN3).startswith("AVX2 (vpmaddubsw, no VNNI)")
    assert int8_isa(ZEN4).startswith("AVX512-VNNI")
    assert int8_isa(SAPPHIRE_RAPIDS).startswith("AMX-INT8")
    assert int8_isa(ZEN3 | {"avx_vnni"}).startswith("AVX-VNNI")
    assert "emulated" in kernel_plan(ZEN3)["bfloat16"]
    assert "AVX512-BF16" in kernel_plan(ZEN4)["bfloat16"] and "AMX-BF16" in kernel_plan(SAPPHIRE_RAPIDS)["bfloat16"]
    assert "AVX-512 FMA" in kernel_plan(ZEN4)["float32"] and "AVX2 FMA" in kernel_plan(ZEN3)["float32"]
    assert kernel_plan(ZEN3)["int8"].endswith("QKV in float32 (no bfloat16 instructions in use)")
    assert kernel_plan(ZEN4)["int8"].endswith("QKV in bfloat16 (AVX512-BF16 (vdpbf16ps))")
    assert isa_summary(ZEN3) == "avx2 fma" and isa_summary(frozenset()).startswith("none of")


# (CPU, ONEDNN_MAX_CPU_ISA) -> the level oneDNN runs, its int8 instructions, float32 width, bfloat16 instructions.
CAPPED = [
    (SAPPHIRE_RAPIDS, NO_CAP, "AVX512_CORE_AMX", "AMX-INT8", "AVX-512", "AMX-BF16"),
    (SAPPHIRE_RAPIDS, "AVX512_CORE_AMX", "AVX512_CORE_AMX", "AMX-INT8", "AVX-512", "AMX-BF16"),
    (SAPPHIRE_RAPIDS, "avx10_1_512_amx", "AVX512_CORE_AMX", "AMX-INT8", "AVX-512", "AMX-BF16"),  # alias, any case
    (SAPPHIRE_RAPIDS, "AVX512_CORE_FP16", "AVX512_CORE_FP16", "AVX512-VNNI", "AVX-512", "AVX512-BF16"),
    (SAPPHIRE_RAPIDS, "AVX512_CORE_BF16", "AVX512_CORE_BF16", "AVX512-VNNI", "AVX-512", "AVX512-BF16"),
    (SAPPHIRE_RAPIDS, "AVX512_CORE_VNNI", "AVX512_CORE_VNNI", "AVX512-VNNI", "AVX-512", None),
    (SAPPHIRE_RAPIDS, "AVX512_CORE", "AVX512_CORE", "AVX-512BW", "AVX-512", None),
    (SAPPHIRE_RAPIDS, "AVX2_VNNI", "AVX2_VNNI", "AVX-VNNI", "AVX2 FMA", None),
    (SAPPHIRE_RAPIDS, "AVX2", "AVX2", "AVX2 (", "AVX2 FMA", None),
    (ZEN4, "AVX512_CORE_AMX", "AVX512_CORE_BF16", "AVX512-VNNI", "AVX-512", "AVX512-BF16"),  # a cap above the CPU
    (ZEN4, "AVX2_VNNI", "AVX2", "AVX2 (", "AVX2 FMA", None),  # a level this CPU lacks: the one below it
    (ZEN3, NO_CAP, "AVX2", "AVX2 (", "AVX2 FMA", None),
    (ZEN3, "AVX", "AVX", "SSE4.1 (pmaddubsw", "AVX (no FMA)", None),
    (ZEN3, "SSE41", "SSE41", "SSE4.1 (pmaddubsw", "SSE4.1 (no FMA)", None),
    (frozenset({"sse4_2"}), NO_CAP, "none", "reference", "reference", None),
    (ZEN3, "no-such-isa", "AVX2", "AVX2 (", "AVX2 FMA", None),  # oneDNN ignores what it does not know
]


@pytest.mark.parametrize("flags, cap, level, int8, float32, bfloat16", CAPPED)
def test_the_effective_isa_is_the_cpus_flags_within_the_cap(flags, cap, level, int8, float32, bfloat16):
    effective = effective_flags(flags, cap)
    assert onednn_isa(flags, cap) == level
    assert int8_isa(effective).startswith(int8) and float32_isa(effective).startswith(float32)
    assert (bfloat16_isa(effective) or "").startswith(bfloat16 or "") and (bfloat16_isa(effective) is None) == (
        bfloat16 is None
    )
    assert effective <= flags and "sse4_2" in effective  # flags no oneDNN level governs stay
    # oneDNN converts bfloat16 on AVX-512 (AVX512_CORE) without AVX512-BF16: the bf16 reorder works from there.
    assert onednn_bfloat16_supported(effective) == (level.startswith("AVX512") or level == "AVX2_VNNI_2")


def test_the_environment_cap_reaches_the_plan_the_engine_and_the_summary(monkeypatch):
    """An AMX Xeon under ONEDNN_MAX_CPU_ISA=AVX2: the plan names AVX2 kernels and the engine takes no bfloat16
    path (oneDNN refuses bfloat16 weight reorders under that cap)."""
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: SAPPHIRE_RAPIDS)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)
    assert "AMX-INT8" in kernel_plan()["int8"] and policy.cpu_has_native_bfloat16() and cap_summary() is None
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx512_core")  # oneDNN's older name for the variable
    assert onednn_isa() == "AVX512_CORE" and not policy.cpu_has_native_bfloat16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the newer name wins
    plan = kernel_plan()
    assert "AVX2 FMA" in plan["float32"] and "AVX2 (vpmaddubsw" in plan["int8"] and "emulated" in plan["bfloat16"]
    assert not policy.cpu_has_native_bfloat16() and not onednn_bfloat16_supported()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    summary = cap_summary()
    assert "ONEDNN_MAX_CPU_ISA=AVX2: oneDNN runs AVX2 (this CPU's best: AVX512_CORE_AMX)" in summary
    assert "ATEN_CPU_CAPABILITY=default: ATen runs default (this CPU's best: avx512)" in summary


def test_aten_capability_is_the_variable_or_the_best_the_flags_allow():
    assert aten_capability(SAPPHIRE_RAPIDS, {}) == "avx512" and aten_capability(ZEN3, {}) == "avx2"
    assert aten_capability(frozenset({"sse4_1"}), {}) == "default"
    assert aten_capability(SAPPHIRE_RAPIDS, {"ATEN_CPU_CAPABILITY": "AVX2"}) == "avx2"
    assert aten_capability(ZEN3, {"ATEN_CPU_CAPABILITY": "bogus"}) == "avx2"


# -- the same answers from the libraries themselves, under whatever cap this process runs (tests/isa_matrix) ----

#: oneDNN's verbose ``isa:`` names (cpu_isa_traits.cpp) of the levels in cpu_kernels.ONEDNN_LEVELS.
VERBOSE_ISA_NAMES = {
    "Intel SSE4.1": "SSE41",
    "Intel AVX": "AVX",
    "Intel AVX2": "AVX2",
    "Intel AVX2 with Intel DL Boost": "AVX2_VNNI",
    "Intel AVX2 with Intel DL Boost, float16 and bfloat16 support": "AVX2_VNNI_2",
    "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions": "AVX512_CORE",
    "Intel AVX-512 with Intel DL Boost": "AVX512_CORE_VNNI",
    "Intel AVX-512 with Intel DL Boost and bfloat16 support": "AVX512_CORE_BF16",
    "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support": "AVX512_CORE_FP16",
    "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with bfloat16 and 8-bit "
    "integer support": "AVX512_CORE_AMX",
    "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with bfloat16, float16 and "
    "8-bit integer support": "AVX512_CORE_AMX_FP16",
}
ONEDNN_LINEAR = (
    "import torch; w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8), None); "
    "torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8), w, None, 'none', [], '')"
)


@pytest.mark.isa
def test_the_plan_names_the_isa_onednn_reports():
    """oneDNN's own verbose line (a fresh process: it prints the ISA once, and reads the cap once) names the level
    :func:`onednn_isa` computes from the flags and ``ONEDNN_MAX_CPU_ISA``."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    run = subprocess.run(
        [sys.executable, "-c", ONEDNN_LINEAR],
        env={**os.environ, "ONEDNN_VERBOSE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    reported = re.search(r"isa:(.*)$", run.stdout, re.MULTILINE)
    assert reported, run.stdout[:2000]
    assert VERBOSE_ISA_NAMES.get(reported.group(1).strip().rstrip(",")) == onednn_isa(), reported.group(1)


@pytest.mark.isa
def test_bfloat16_and_aten_answers_match_torch():
    """What oneDNN (through torch) says it can do in bfloat16, and ATen's capability, under this process's caps."""
    if torch.backends.mkldnn.is_available():
        assert torch.ops.mkldnn._is_mkldnn_bf16_supported() == onednn_bfloat16_supported()
    assert torch.backends.cpu.get_cpu_capability().lower() == aten_capability()
    if policy.cpu_has_native_bfloat16():
        assert torch.ops.mkldnn._is_mkldnn_bf16_supported()
