"""Kernel choice from CPU flags, and the small-forward thread policy."""

from __future__ import annotations

import time

import torch

from minilm_npu.engine.cpu_kernels import AdaptiveThreads, int8_isa, isa_summary, kernel_plan

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
