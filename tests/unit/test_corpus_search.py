"""Exact chunked top-k search against a brute-force numpy answer."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from minilm_npu.corpus.job import EmbedSettings, LocalEngine, embed_corpus
from minilm_npu.corpus.search import search_corpus, search_vectors
from minilm_npu.corpus.writer import embeddings_table
from minilm_npu.errors import InputError
from tests.fixtures.corpus import FakeEncoder
from tests.ranking import assert_top_k


@pytest.fixture()
def corpus(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(f"document {i}\n" for i in range(1, 41)), encoding="utf-8")
    embed_corpus(
        src, tmp_path / "out", LocalEngine(FakeEncoder()), EmbedSettings(shard_rows=7, keep_text=True, progress=False)
    )
    return tmp_path / "out"


def brute_force(queries) -> list[dict[str, float]]:
    """Every document's score per query, in float64 (the exact answer the float32 search is held to)."""
    docs = np.stack([FakeEncoder.vector(f"document {i}") for i in range(1, 41)]).astype(np.float64)
    return [{str(j + 1): float(score) for j, score in enumerate(row)} for row in queries.astype(np.float64) @ docs.T]


@pytest.mark.parametrize("batch_rows", [3, 1000])
def test_chunked_search_equals_brute_force(corpus, batch_rows):
    queries = np.stack([FakeEncoder.vector("q1"), FakeEncoder.vector("q2")])
    hits = search_vectors(corpus, queries, k=5, batch_rows=batch_rows)
    for got, reference in zip(hits, brute_force(queries)):
        # float32 dot products of unit vectors: within a few float32 ulps of the float64 answer.
        assert_top_k(got, reference, k=5, atol=1e-6)
        assert [h.rank for h in got] == [1, 2, 3, 4, 5]
        assert got[0].text == f"document {got[0].id}"


def test_text_query_finds_its_own_document_and_k_larger_than_corpus(corpus):
    hits = search_corpus(corpus, "document 17", FakeEncoder(), k=100)
    assert len(hits) == 40 and hits[0].id == "17" and hits[0].score == pytest.approx(1.0, abs=1e-6)


def test_ties_keep_corpus_order_and_unnormalised_rows(tmp_path):
    vectors = np.array([[1, 0], [2, 0], [0, 1], [3, 0]], dtype=np.float32)
    pq.write_table(embeddings_table(["a", "b", "c", "d"], vectors), tmp_path / "x.parquet")
    hits = search_vectors(tmp_path / "x.parquet", np.array([5.0, 0.0]), k=3)[0]
    assert [h.id for h in hits] == ["a", "b", "d"] and all(h.text is None for h in hits)
    assert hits[0].score == pytest.approx(1.0)


def test_errors(corpus, tmp_path):
    with pytest.raises(InputError, match="dimensions"):
        search_vectors(corpus, np.ones(3), k=1)
    with pytest.raises(InputError, match="no such corpus"):
        search_vectors(tmp_path / "missing", np.ones(8), k=1)
    other = FakeEncoder()
    other.model_name = "other/model"
    with pytest.raises(InputError, match="embedded with fake/model"):
        search_corpus(corpus, "x", other)
    with pytest.raises(InputError, match="all zeros"):
        search_vectors(corpus, np.zeros(8), k=1)
    with pytest.raises(InputError, match="positive integer"):
        search_vectors(corpus, np.ones(8), k=0)
