"""The verification suite with the real model on CPU, in-process (shared encoders keep it quick).

Device under test: cpu with the default backend in every dtype the engine supports (a dtype it rejects must be
reported as UNSUPPORTED), and the reference backend against itself (which must agree exactly).
"""

from __future__ import annotations

import json

import pytest

from minilm_npu.config import DEFAULT_BACKEND, DTYPES
from minilm_npu.samples import MIXED_24
from minilm_npu.verify.accuracy import PASS, UNSUPPORTED, AccuracySettings, Target, run_accuracy
from minilm_npu.verify.bench import BenchSettings, run_bench
from minilm_npu.verify.report import to_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sts_small(tmp_path_factory, stsb_path):
    """The first 80 pairs of STS-B dev, as a file in the same layout."""
    lines = stsb_path.read_text(encoding="utf-8").splitlines()[:81]
    path = tmp_path_factory.mktemp("sts") / "sts-small.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_backend_each_dtype_against_reference(dtype, encoder, reference_encoder, sts_small):
    from minilm_npu import MiniLMEncoder

    def make(d):
        # float32 reuses the session's default encoder; other dtypes load their own copy.
        return encoder if d == encoder.dtype else MiniLMEncoder(device="cpu", dtype=d)

    exact = dtype == "float32"
    # Reduced precisions run on 8 of the sentences (all three languages): CPU bf16/fp16 through a padded backend is
    # slow, and the long one is covered in float32.
    texts = MIXED_24 if exact else MIXED_24[:10:2] + MIXED_24[11:14]
    settings = AccuracySettings(Target("cpu", [dtype]), texts=texts, sts_path=sts_small if exact else None)
    run = run_accuracy(settings, reference_encoder=reference_encoder, make_encoder=make)
    report = json.loads(to_json(run.report))  # what accuracy.json holds
    (result,) = report["results"]
    assert result["dtype"] == dtype
    if result["status"] == UNSUPPORTED:
        assert dtype != "float32", "float32 must always be supported"
        assert report["status"] == UNSUPPORTED and result["reason"]
        return
    assert result["status"] == PASS and report["status"] == PASS, result["checks"]
    assert result["backend"] == DEFAULT_BACKEND
    metrics = result["metrics"]
    assert metrics["error_rate_pct"] < 1.0 and metrics["min_cosine"] >= 0.99 and metrics["finite"] is True
    assert metrics["error_rate_pct"] == pytest.approx((1 - metrics["mean_cosine"]) * 100)
    assert metrics["similarity_pearson_r"] > 0.999
    # int8 runs one sentence alone on the exact float32 graph, so alone vs batched is int8's own bound.
    invariance = 0.99 if dtype == "int8" else 0.999
    assert metrics["batch_invariance_min_cosine"] >= invariance and metrics["determinism_min_cosine"] >= 0.999
    assert report["environment"]["dtype"] == dtype and report["environment"]["backend"] == DEFAULT_BACKEND
    assert report["under_test"]["official_weights"] is True and report["reference"]["official_weights"] is True
    assert report["reference"]["backend"] == "transformers" and report["reference"]["dtype"] == "float32"
    assert report["texts"]["count"] == len(texts)
    assert set(run.arrays[dtype]) == {"reference", "test"} and run.arrays[dtype]["test"].shape == (len(texts), 384)
    if exact:
        assert metrics["max_abs_error"] <= 1e-5  # float32 is exact, as sentence-transformers
        assert report["texts"]["over_128_tokens"] >= 1  # the built-in set holds the 129–256-token sentence
        assert report["sts"]["pairs"] == 80
        assert abs(metrics["sts_spearman"] - metrics["sts_spearman_reference"]) <= 0.005
        assert 0.7 < metrics["sts_spearman_reference"] <= 1.0


def test_reference_backend_against_itself_is_exact(reference_encoder):
    texts = [MIXED_24[i] for i in (0, 4, 8, 11, 13, 23)]  # short, Chinese, French, numbers, and the long one
    settings = AccuracySettings(texts=texts)
    run = run_accuracy(settings, reference_encoder=reference_encoder, make_encoder=lambda dtype: reference_encoder)
    metrics = json.loads(to_json(run.report))["results"][0]["metrics"]
    assert run.status == PASS
    assert metrics["max_abs_error"] == 0.0 and metrics["mse"] == 0.0 and metrics["determinism_max_abs"] == 0.0
    assert metrics["mean_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["similarity_pearson_r"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["batch_invariance_max_abs"] <= 1e-5


def test_bench_against_cpu_and_sentence_transformers(encoder, reference_encoder):
    settings = BenchSettings(
        texts=MIXED_24[:4], batch_sizes=[1, 2], warmup=1, rounds=2, compare_cpu=True, compare="sentence-transformers"
    )
    report = json.loads(to_json(run_bench(settings, make_encoder=lambda dtype: encoder, cpu_encoder=reference_encoder)))
    (result,) = report["results"]
    assert result["st_dtype"] == "float32" and result["load_s"] >= 0
    assert report["environment"]["device"] == "cpu" and report["environment"]["device_name"]
    for row in result["rows"]:
        assert row["sentences_per_s"] > 0 and row["tokens_per_s"] > row["sentences_per_s"]
        assert row["first_call_ms"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0
        assert row["ratio_vs_st"] == pytest.approx(row["sentences_per_s"] / row["st_sentences_per_s"])
        assert row["speedup_vs_cpu"] == pytest.approx(row["sentences_per_s"] / row["cpu_sentences_per_s"])
    assert report["cpu"]["dtype"] == "float32" and len(report["cpu"]["rows"]) == 2
