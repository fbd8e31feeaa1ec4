"""Kernel choice from CPU flags."""

from __future__ import annotations

from minilm_npu.engine.cpu_kernels import int8_isa, isa_summary, kernel_plan

ZEN3 = frozenset({"avx2", "fma", "sse4_2"})
ZEN4 = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_int8", "amx_bf16"}


def test_kernels_follow_the_flags_of_the_cpu_that_loads_the_model():
    assert int8_isa(ZEN3).startswith("AVX2 (vpmaddubsw, no VNNI)")
    assert int8_isa(ZEN4).startswith("AVX512-VNNI")
    assert int8_isa(SAPPHIRE_RAPIDS).startswith("AMX-INT8")
    assert int8_isa(frozenset({"avx2", "fma", "avx_vnni"})).startswith("AVX-VNNI")
    assert "emulated" in kernel_plan(ZEN3)["bfloat16"]
    assert "AVX512-BF16" in kernel_plan(ZEN4)["bfloat16"] and "AMX-BF16" in kernel_plan(SAPPHIRE_RAPIDS)["bfloat16"]
    assert "AVX-512 FMA" in kernel_plan(ZEN4)["float32"] and "AVX2 FMA" in kernel_plan(ZEN3)["float32"]
    assert kernel_plan(ZEN3)["int8"].endswith("QKV in float32 (no bfloat16 hardware)")
    assert kernel_plan(ZEN4)["int8"].endswith("QKV in bfloat16 (AVX512-BF16 (vdpbf16ps))")
    assert isa_summary(ZEN3) == "avx2 fma" and isa_summary(frozenset()).startswith("none of")
