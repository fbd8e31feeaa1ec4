"""Kernel choice from the CPU's flags under oneDNN's and ATen's caps, and the small-forward thread policy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import torch

from minilm_npu.engine import cpu_kernels, policy
from minilm_npu.engine.cpu_kernels import (
    AdaptiveThreads,
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


def _fake_policy(monkeypatch, threads: int = 4, explore_every: int = 4) -> tuple[AdaptiveThreads, dict, list]:
    """A policy on a fake thread count: ``state["threads"]`` is the calling thread's count, ``calls`` every set."""
    state, calls = {"threads": threads}, []

    def set_threads(n):
        calls.append(n)
        state["threads"] = n

    monkeypatch.setattr(torch, "set_num_threads", set_threads)
    monkeypatch.setattr(torch, "get_num_threads", lambda: state["threads"])
    return AdaptiveThreads(explore_every=explore_every), state, calls


def test_small_forwards_try_both_then_keep_the_faster_and_explore(monkeypatch):
    policy, state, calls = _fake_policy(monkeypatch)
    ran_with = []

    clock = {"now": 0.0}
    monkeypatch.setattr(time, "perf_counter", lambda clock=clock: clock["now"])

    def forward():  # on this "machine" (a loaded one) one thread is three times faster
        ran_with.append(state["threads"])
        clock["now"] += 0.002 if state["threads"] == 1 else 0.006
        return "out"

    assert [policy.run(10, forward) for _ in range(10)] == ["out"] * 10
    assert ran_with[:4] == [1, 4, 1, 4]  # both run once untimed (warm-up), then timed
    assert ran_with[4:] == [1, 1, 1, 4, 1, 1]  # then the faster, the slower re-tried every 4th call
    assert state["threads"] == 4 and calls[::2] == [1] * len(calls[::2])  # always restored afterwards


def test_each_size_class_keeps_its_own_choice(monkeypatch):
    """A loaded machine can favour one thread for a query and all threads for a large batch: both are learnt."""
    policy, state, _ = _fake_policy(monkeypatch)
    clock = {"now": 0.0}
    monkeypatch.setattr(time, "perf_counter", lambda clock=clock: clock["now"])
    ran_with = {10: [], 5000: []}

    def forward(tokens):
        ran_with[tokens].append(state["threads"])
        one_thread_faster = tokens < 100
        clock["now"] += 0.002 if (state["threads"] == 1) == one_thread_faster else 0.006
        return tokens

    for _ in range(8):
        assert policy.run(10, lambda: forward(10)) == 10
        assert policy.run(5000, lambda: forward(5000)) == 5000
    # Each class: both warmed (untimed), both timed, then its own faster choice, the other re-tried every 4th call.
    assert ran_with[10] == [1, 4, 1, 4, 1, 1, 1, 4]
    assert ran_with[5000] == [1, 4, 1, 4, 4, 4, 4, 1]
    assert policy.size_class(128) == 0 and policy.size_class(129) == 1 and policy.size_class(10**6) == 2


def test_single_thread_processes_are_left_alone(monkeypatch):
    single, _, calls = _fake_policy(monkeypatch, threads=1)
    assert single.run(5, lambda: 8) == 8 and single.run(5000, lambda: 9) == 9 and not calls


def test_threads_are_restored_when_the_forward_fails(monkeypatch):
    policy, _, calls = _fake_policy(monkeypatch)

    def boom():
        raise RuntimeError("boom")

    try:
        policy.run(5, boom)  # first call tries one thread
    except RuntimeError:
        pass
    assert calls == [1, 4]


def test_a_first_call_is_a_warm_up_not_a_measurement(monkeypatch):
    """A first call that compiles kernels (seconds) must not make its thread count look slow for good."""
    policy, state, _ = _fake_policy(monkeypatch, threads=2)
    clock = {"now": 0.0}
    monkeypatch.setattr(time, "perf_counter", lambda clock=clock: clock["now"])
    first = {1: True, 2: True}

    def forward():
        threads = state["threads"]
        clock["now"] += 30.0 if first[threads] else (0.002 if threads == 1 else 0.004)
        first[threads] = False

    for _ in range(6):
        policy.run(10, forward)
    assert policy.choice(0) == 1 and policy.seconds_per_token[0, 1] < 0.001


def test_one_thread_must_win_clearly_to_be_chosen(monkeypatch):
    """A 10 % edge for one thread is within a size class's noise: all threads stay; a 3x edge switches."""
    for one_thread_seconds, expected in ((0.0036, 2), (0.0013, 1)):
        policy, state, _ = _fake_policy(monkeypatch, threads=2, explore_every=100)
        clock = {"now": 0.0}
        monkeypatch.setattr(time, "perf_counter", lambda clock=clock: clock["now"])

        def forward(clock=clock, state=state, one_thread_seconds=one_thread_seconds):
            clock["now"] += one_thread_seconds if state["threads"] == 1 else 0.004

        for _ in range(6):
            policy.run(10, forward)
        assert policy.choice(0) == expected


def test_the_budget_is_the_calling_threads_count(monkeypatch):
    """A CPU worker that owns one of two cores (device="cpu,cpu") never starts a second thread, and a worker
    with 3 of 6 chooses between 1 and 3, not the process's 6."""
    policy, state, calls = _fake_policy(monkeypatch, threads=1)
    assert policy.run(10, lambda: state["threads"]) == 1 and not calls
    state["threads"] = 3
    ran_with = [policy.run(10, lambda: state["threads"]) for _ in range(4)]
    assert sorted(set(ran_with)) == [1, 3] and state["threads"] == 3
