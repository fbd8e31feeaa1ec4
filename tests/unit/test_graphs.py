"""Static-shape forward passes (graphs.py) on a tiny random BERT: gears, exactness against the packed forward, and
the eager fallback when capture fails."""

from __future__ import annotations

import logging
import random
from types import SimpleNamespace

import pytest
import torch

from minilm_npu.devices import GraphAPI
from minilm_npu.engine.bert import BertConfig, PackedBert, expected_shapes, pack
from minilm_npu.engine.graphs import MAX_GRAPH_SLOTS, GraphedForwards, StaticShapeForward, gear_for
from minilm_npu.engine.head import SentenceHead

CONFIG = BertConfig(
    vocab_size=200,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    layer_norm_eps=1e-12,
    max_position_embeddings=300,
    type_vocab_size=2,
)


def head(*modes: str) -> SentenceHead:
    """Pooling only (no Dense), as a model with these pooling modes has it."""
    width = CONFIG.hidden_size
    files = SimpleNamespace(
        pooling_modes=modes, include_prompt=True, dense=(), hidden_size=width, dimension=width * len(modes)
    )
    return SentenceHead(files, torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny():
    generator = torch.Generator().manual_seed(0)
    weights = {name: torch.randn(shape, generator=generator) * 0.2 for name, shape in expected_shapes(CONFIG).items()}
    return PackedBert(CONFIG, weights, torch.device("cpu"))


def random_batch(count: int, longest: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(CONFIG.vocab_size) for _ in range(rng.randint(1, longest))] for _ in range(count)]


def test_gears_round_up_and_respect_the_budget():
    assert gear_for([5], "float16") == (1, 16)
    assert gear_for([17, 3, 3], "float16") == (4, 32)
    assert gear_for([172], "float16") == (1, 192)  # finer gears than powers of two past 32
    assert gear_for([100] * 64, "float16") == (64, 128)
    assert gear_for([100] * 64, "float32") is None  # 8,192 slots: over float32's budget
    assert gear_for([257], "float16") is None  # wider than any gear
    assert gear_for([1] * 300, "float16") is None  # more rows than any gear
    assert gear_for([5], "int8") is None  # no graphs for dtypes without a budget


@pytest.mark.parametrize("count,longest", [(1, 5), (3, 40), (8, 16), (13, 120)])
def test_static_shape_forward_equals_packed_forward(tiny, count, longest):
    batch = random_batch(count, longest, seed=count)
    packed = pack(batch, "per_sequence", tiny.device)
    expected = head("mean")(tiny.forward(packed), packed.rows)
    graphs = GraphedForwards(tiny, "float16", head("mean"), api=None)  # the eager static-shape path, as the CPU runs it
    torch.testing.assert_close(graphs.embed(batch), expected, atol=1e-5, rtol=0)
    # Every pooling mode, several at once, through the static layout (padding slots, spare rows).
    modes = head("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
    static = StaticShapeForward(tiny, *gear_for([len(ids) for ids in batch], "float16"), modes)
    static.load(batch)
    torch.testing.assert_close(static.compute()[:count], modes(tiny.forward(packed), packed.rows), atol=1e-5, rtol=0)


def test_one_runner_per_gear_and_reused(tiny):
    graphs = GraphedForwards(tiny, "float16", head("mean"), api=None)
    for seed in range(4):
        graphs.embed(random_batch(3, 10, seed))  # all (4, 16)
    graphs.embed([[7] * 30])  # (1, 32)
    assert sorted(graphs._runners) == [(1, 32), (4, 16)]


def test_too_large_batches_are_left_to_the_eager_engine(tiny, monkeypatch):
    monkeypatch.setitem(MAX_GRAPH_SLOTS, "float16", 64)
    graphs = GraphedForwards(tiny, "float16", head("mean"), api=None)
    assert graphs.embed([[1] * 16] * 8) is None  # 8 x 16 = 128 slots, over the budget of 64
    assert graphs.embed([[1] * 16] * 2) is not None  # 2 x 16 = 32 slots
    assert list(graphs._runners) == [(2, 16)]


def test_capture_failure_falls_back_to_eager_once(tiny, caplog):
    class Broken(Exception):
        pass

    def capture(graph, pool=None):
        raise Broken("capture is not supported here")

    class Stream:
        def __init__(self, device=None):
            pass

        def wait_stream(self, other):
            pass

    class Use:
        def __init__(self, stream):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    api = GraphAPI(
        graph_class=object,
        capture=capture,
        pool_handle=lambda: None,
        stream=Stream,
        use_stream=Use,
        current_stream=lambda device=None: Stream(),
    )
    graphs = GraphedForwards(tiny, "float16", head("mean"), api)
    with caplog.at_level(logging.WARNING):
        assert graphs.embed(random_batch(2, 8, 0)) is None
    assert graphs.failed and "capture failed" in caplog.text
    assert graphs.embed(random_batch(2, 8, 1)) is None  # not retried on every call
