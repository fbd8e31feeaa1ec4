"""The CPU engine's one-sentence path (engine/query.py) on the real model, against sentence-transformers.

Calls of one sentence run on ONNX Runtime (or OpenVINO) over a graph built from the same weights; larger calls stay
on the packed engine. Every test compares to sentence-transformers, with the packed engine's bound: float32 within
1e-5 after normalisation (different GEMM libraries sum in different orders: measured ~3e-7).
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from minilm_npu import MiniLMEncoder
from minilm_npu.engine import query as query_module
from minilm_npu.engine.cpu_execution import use_threads
from minilm_npu.samples import MIXED_24
from tests import texts

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

FLOAT32_BOUND = 1e-5
ONE_BY_ONE = texts.ALL + MIXED_24


@pytest.fixture(scope="module")
def query_cache(tmp_path_factory):
    """One cache directory for the module: the graph is built once, then read back."""
    path = tmp_path_factory.mktemp("query-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINILM_NPU_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def ort_encoder(query_cache):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(query_module.QUERY_ENV, "onnxruntime")
        return MiniLMEncoder(device="cpu")


def backend_of(encoder):
    return encoder.workers[0].backend


def one_by_one(encoder, batch):
    return np.stack([encoder.encode(text) for text in batch])


@pytest.mark.isa
def test_one_sentence_calls_run_on_onnxruntime_and_stay_exact(ort_encoder, st_model, query_cache):
    backend = backend_of(ort_encoder)
    calls = []
    forward = backend.query.forward
    backend.query.forward = lambda ids, positions: calls.append(len(ids)) or forward(ids, positions)
    try:
        ours = one_by_one(ort_encoder, ONE_BY_ONE)
    finally:
        del backend.query.forward
    assert len(calls) == len(ONE_BY_ONE)  # every call of one sentence took the one-sentence path
    reference = st_model.encode(ONE_BY_ONE, batch_size=1)
    assert np.abs(ours - reference).max() <= FLOAT32_BOUND
    assert "onnxruntime" in ort_encoder.engine_choices()["one sentence"]
    assert len(list((query_cache / "query").glob("*-float32-*.onnx"))) == 1


@pytest.mark.isa
def test_int8_engines_run_one_sentence_on_the_exact_graph(query_cache, st_model, monkeypatch):
    """int8: one sentence on the float32 graph (exact, so within the int8 bound by far); batches on the int8
    kernels, within the int8 bound and not exact (they are still int8)."""
    monkeypatch.setenv(query_module.QUERY_ENV, "onnxruntime")
    encoder = MiniLMEncoder(device="cpu", dtype="int8")
    assert "onnxruntime" in encoder.engine_choices()["one sentence"]
    reference = st_model.encode(MIXED_24, batch_size=1)
    assert np.abs(one_by_one(encoder, MIXED_24) - reference).max() <= FLOAT32_BOUND
    assert backend_of(encoder).query._runs
    together = encoder.encode(MIXED_24, batch_size=8)
    cosines = (together * reference).sum(axis=1)
    assert cosines.min() >= 0.99 and np.abs(together - reference).max() > FLOAT32_BOUND


def test_batches_stay_on_the_packed_engine(ort_encoder, st_model, monkeypatch):
    backend = backend_of(ort_encoder)
    monkeypatch.setattr(backend.query, "forward", lambda *args: pytest.fail("a batch took the one-sentence path"))
    together = ort_encoder.encode(ONE_BY_ONE, batch_size=8)
    assert np.abs(together - st_model.encode(ONE_BY_ONE)).max() <= FLOAT32_BOUND


def test_both_thread_counts_and_concurrent_callers(ort_encoder, st_model):
    """A session per thread count (one thread or all, as AdaptiveThreads picks), shared by callers on several
    threads (the server's lanes)."""
    reference = st_model.encode(MIXED_24, batch_size=1)
    for count in (1, 2):
        with use_threads(count):
            assert np.abs(one_by_one(ort_encoder, MIXED_24) - reference).max() <= FLOAT32_BOUND
    assert {1, 2} <= set(backend_of(ort_encoder).query._runs)
    results: dict[int, np.ndarray] = {}

    def worker(index: int) -> None:
        with use_threads(1):
            results[index] = one_by_one(ort_encoder, MIXED_24[index::2])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert np.abs(results[0] - reference[0::2]).max() <= FLOAT32_BOUND
    assert np.abs(results[1] - reference[1::2]).max() <= FLOAT32_BOUND


def test_openvino_runs_it_too(query_cache, st_model, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv(query_module.QUERY_ENV, "openvino")
    encoder = MiniLMEncoder(device="cpu")
    assert "openvino" in encoder.engine_choices()["one sentence"]
    reference = st_model.encode(MIXED_24, batch_size=1)
    assert np.abs(one_by_one(encoder, MIXED_24) - reference).max() <= FLOAT32_BOUND
    assert backend_of(encoder).query._runtime is not None and not backend_of(encoder).query.failed


@pytest.mark.parametrize("setting", ["off", "missing"])
def test_without_a_runtime_every_call_runs_on_the_packed_engine(setting, query_cache, st_model, monkeypatch):
    if setting == "off":
        monkeypatch.setenv(query_module.QUERY_ENV, "off")
    else:  # neither onnxruntime nor openvino installed
        monkeypatch.delenv(query_module.QUERY_ENV, raising=False)
        monkeypatch.setattr("minilm_npu.engine.packed.installed_runtimes", lambda: ())
    encoder = MiniLMEncoder(device="cpu")
    assert backend_of(encoder).query is None
    choice = encoder.engine_choices()["one sentence"]
    assert choice.startswith("packed engine") and ("off" in choice if setting == "off" else "not installed" in choice)
    reference = st_model.encode(MIXED_24, batch_size=1)
    assert np.abs(one_by_one(encoder, MIXED_24) - reference).max() <= FLOAT32_BOUND


def test_a_runtime_that_fails_falls_back_once_with_a_warning(query_cache, st_model, monkeypatch, caplog):
    monkeypatch.setenv(query_module.QUERY_ENV, "onnxruntime")
    encoder = MiniLMEncoder(device="cpu")

    def broken(self, threads):
        raise RuntimeError("no CPU execution provider")

    monkeypatch.setattr(query_module._OnnxRuntime, "session", broken)
    with caplog.at_level(logging.WARNING, logger="minilm_npu.engine.query"):
        ours = one_by_one(encoder, MIXED_24)
    assert np.abs(ours - st_model.encode(MIXED_24, batch_size=1)).max() <= FLOAT32_BOUND
    assert caplog.text.count("unavailable") == 1 and "no CPU execution provider" in caplog.text
    assert "failed" in encoder.engine_choices()["one sentence"]


def test_warmup_builds_the_session_before_the_first_query(query_cache, monkeypatch):
    monkeypatch.setenv(query_module.QUERY_ENV, "onnxruntime")
    encoder = MiniLMEncoder(device="cpu")
    assert not backend_of(encoder).query._runs  # nothing built at load
    encoder.warmup()
    assert backend_of(encoder).query._runs


@pytest.mark.parametrize("name", ["xlmr-cls-dense", "roberta-max", "bert-prompts", "bert-sqrt-len"])
def test_every_model_family_runs_one_sentence_on_the_graph(name, st_model_dir, query_cache, monkeypatch):
    """The graph follows each model's config.json (layers, width, heads, epsilon), the RoBERTa family's positions
    (from ``pad_token_id + 1``, a literal ``<pad>`` kept at ``pad_token_id``), and the head pools its output (CLS,
    max, Dense, prompt tokens left out). Tolerance: 1e-5 scaled by the vectors' magnitude, as for the packed
    engine on these models (tests/integration/test_model_family.py says why)."""
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv(query_module.QUERY_ENV, "onnxruntime")
    path = str(st_model_dir(name))
    encoder = MiniLMEncoder(model_path=path, device="cpu")
    backend = backend_of(encoder)
    calls = []
    forward = backend.query.forward
    monkeypatch.setattr(backend.query, "forward", lambda ids, positions: calls.append(1) or forward(ids, positions))
    batch = texts.ALL + [" le chat  <pad> est assis ", "x<s>y </s> z [SEP] w [CLS]"]
    ours = one_by_one(encoder, batch)
    assert len(calls) == len(batch)
    theirs = SentenceTransformer(path, device="cpu").encode(batch, batch_size=1)
    assert np.abs(ours - theirs).max() <= FLOAT32_BOUND * max(1.0, float(np.abs(theirs).max()))


def test_cross_encoders_decline_the_graph(st_model_dir, query_cache, monkeypatch, caplog):
    """A cross-encoder's forward takes token types and ends in a classification head, neither of which the graph
    has: one pair runs on the packed engine, says so, and scores as a batch of pairs does."""
    from minilm_npu import Reranker
    from tests.fixtures.models import CROSS_ENCODERS

    monkeypatch.setenv(query_module.QUERY_ENV, "onnxruntime")
    reranker = Reranker(model_path=str(st_model_dir(CROSS_ENCODERS[0])), device="cpu")
    backend = reranker.workers[0].backend
    assert backend.query is None and "not for PackedReranker" in backend.choices()["one sentence"]
    pairs = [("a cat", "a cat sits on the mat"), ("stock markets", "the cat sleeps")]
    with caplog.at_level(logging.WARNING, logger="minilm_npu.engine.query"):
        alone = np.concatenate([reranker.predict([pair]) for pair in pairs])
    assert not caplog.text  # declined up front, not by a failed build
    np.testing.assert_allclose(alone, reranker.predict(pairs, batch_size=2), atol=1e-5)
