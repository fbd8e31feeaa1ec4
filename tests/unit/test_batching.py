"""Batch planning: longest first, capped by sequences and by real tokens, every index exactly once."""

from __future__ import annotations

from minilm_npu.encoder import plan_batches


def test_every_index_once_longest_first():
    lengths = [5, 200, 3, 3, 90, 256, 2]
    batches = plan_batches(lengths, batch_size=3, max_batch_tokens=10_000)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert all(len(b) <= 3 for b in batches)


def test_token_budget_closes_batches_but_a_long_sequence_always_fits():
    batches = plan_batches([300, 100, 100, 100], batch_size=32, max_batch_tokens=250)
    assert batches == [[0], [1, 2], [3]]


def test_empty():
    assert plan_batches([], 32, 100) == []


def test_batches_are_halved_until_every_worker_has_one():
    lengths = [10, 50, 20, 40, 30, 60]
    one = plan_batches(lengths, batch_size=32, max_batch_tokens=10_000)
    assert one == [[5, 1, 3, 4, 2, 0]]
    two = plan_batches(lengths, batch_size=32, max_batch_tokens=10_000, workers=2)
    assert two == [[5, 3, 2], [1, 4, 0]]  # alternate rows: 120 and 90 tokens
    four = plan_batches(lengths, batch_size=32, max_batch_tokens=10_000, workers=4)
    assert sorted(i for b in four for i in b) == list(range(6)) and len(four) == 4
    assert plan_batches([7], 32, 100, workers=4) == [[0]]  # one row cannot be split
    assert plan_batches([], 32, 100, workers=2) == []
