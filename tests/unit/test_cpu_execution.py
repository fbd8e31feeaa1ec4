"""The CPU execution policy's thread counts: scoped changes, and each forward on one thread or all (AdaptiveThreads).

The lanes and worker shares are tested through the encoder in ``test_encoder_workers.py``.
"""

from __future__ import annotations

import pathlib
import time

import pytest
import torch

import minilm_npu
from minilm_npu.engine.cpu_execution import AdaptiveThreads, use_threads


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


def test_use_threads_restores_the_callers_count_also_when_the_block_raises():
    with use_threads(2):
        with pytest.raises(RuntimeError):
            with use_threads(3):
                assert torch.get_num_threads() == 3
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        with use_threads(None):
            assert torch.get_num_threads() == 2


def test_every_thread_count_of_the_package_is_set_in_the_policy_module():
    """One place decides CPU threads: no other module of the package calls torch.set_num_threads."""
    package = pathlib.Path(minilm_npu.__file__).parent
    setters = sorted(
        str(path.relative_to(package)) for path in package.rglob("*.py") if "set_num_threads(" in path.read_text()
    )
    assert setters == ["engine/cpu_execution.py"]
