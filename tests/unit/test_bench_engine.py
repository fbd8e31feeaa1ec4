"""The engine benchmark's own arithmetic: interleaved timing turns, real-token FLOPs, weight bytes, verdicts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from minilm_npu.engine.bert import BertConfig

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_engine.py"
MINILM = BertConfig(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
                    layer_norm_eps=1e-12, max_position_embeddings=512, type_vocab_size=2)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_engine", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeEngine:
    def __init__(self, label, seconds, calls):
        self.label, self.seconds, self.calls = label, seconds, calls

    def time(self, texts, batch_size, device, warmup, rounds):
        self.calls.append((self.label, warmup, rounds))
        return self.seconds


def test_engines_take_turns_and_means_cover_every_round(bench):
    calls = []
    engines = [FakeEngine("st", 2.0, calls), FakeEngine("ours", 0.5, calls)]
    means = bench.time_interleaved(engines, ["x"], 1, torch.device("cpu"), warmup=3, rounds=5)
    assert means == [2.0, 0.5]
    assert calls == [("st", 3, 3), ("ours", 3, 3), ("st", 0, 2), ("ours", 0, 2)]
    calls.clear()
    bench.time_interleaved(engines, ["x"], 1, torch.device("cpu"), warmup=0, rounds=1)
    assert calls == [("st", 0, 1), ("ours", 0, 1)]


def test_real_work_and_weight_bytes(bench):
    per_token_linear = 2 * (4 * 384 * 384 + 2 * 384 * 1536)  # 3.5 MFLOP per token per layer
    assert bench.real_work([10], MINILM) == 6 * (10 * per_token_linear + 4 * 100 * 384)
    assert bench.real_work([3, 4], MINILM) == bench.real_work([3], MINILM) + bench.real_work([4], MINILM)
    assert bench.weight_bytes(MINILM, "float32") == 6 * (4 * 384 * 384 + 2 * 384 * 1536) * 4  # 42.5 MB
    assert bench.weight_bytes(MINILM, "bfloat16") == bench.weight_bytes(MINILM, "float32") // 2
    assert bench.weight_bytes(MINILM, "int8") == 6 * (3 * 384 * 384 * 4 + 384 * 384 + 2 * 384 * 1536)


def test_ceiling_and_verdicts(bench):
    results = {"device_type": "cpu", "rows": [
        {"engine": bench.BASELINE, "workload": "24 mixed, batch 32", "latency_ms": 1000.0, "speedup": 1.0,
         "sentences_per_s": 24.0},
        {"engine": "minilm-npu packed float32", "workload": "24 mixed, batch 32", "latency_ms": 100.0,
         "speedup": 10.0, "sentences_per_s": 240.0},
        {"engine": "minilm-npu packed int8", "workload": "24 mixed, batch 32", "latency_ms": 80.0, "speedup": 12.5,
         "sentences_per_s": 300.0},
    ]}
    work = bench.real_work([20] * 24, MINILM)
    limits = {"ops_per_s": {"float32": work / 0.05, "int8": work / 0.1}, "bandwidth_bytes_per_s": 1e12}
    rows = bench.ceilings(results, {"24 mixed, batch 32": ([20] * 24, 1)}, limits, MINILM)
    assert [(r["dtype"], r["target"]) for r in rows] == [("float32", 8.0), ("int8", 20.0)]
    assert rows[0]["ceiling"] == pytest.approx(20.0) and rows[1]["ceiling"] == pytest.approx(10.0)
    table = bench.markdown({**results, "device": "cpu", "threads": 2, "torch": "x", "machine": "y",
                            "limits": limits, "ceilings": rows})
    assert "| 24 mixed, batch 32 | float32 | 10.00x | 20.0x | 8x | met |" in table
    assert "| 24 mixed, batch 32 | int8 | 12.50x | 10.0x | 20x | beyond this machine |" in table
