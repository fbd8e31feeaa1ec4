"""``minilm-npu serve`` on a cross-encoder, as a real process: TEI's ``POST /rerank`` (and ``POST /``), the hosted
rerank APIs' ``POST /v1/rerank``, against sentence-transformers' ``CrossEncoder`` on the same directory; the
embedding routes' 404 on a reranker and the rerank routes' on an embedder; Schemathesis on the reranking server's
published document. (huggingface_hub's InferenceClient has no rerank call, and no rerank client is installed: httpx.)

Tolerance: scores within 1e-5 of ``CrossEncoder.predict`` (float32 arithmetic in another order, see
tests/integration/test_reranker.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.texts import ALL, PASSAGES, QUERIES

from .server_process import start_server

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow
KEY = "rerank-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ATOL = 1e-5
TEXTS = ALL + PASSAGES


@pytest.fixture(scope="module")
def model_path(st_model_dir) -> Path:
    return st_model_dir("ce-bert")


@pytest.fixture(scope="module")
def cross_encoder(model_path):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(model_path), device="cpu")


@pytest.fixture(scope="module")
def server(model_path):
    proc = start_server(
        "--model-path", str(model_path), "--device", "cpu", "--max-client-batch-size", "32", api_key=KEY
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        yield client


def test_rerank_is_cross_encoder_rank(http, cross_encoder):
    for query in QUERIES[:3]:
        expected = cross_encoder.rank(query, TEXTS)
        got = http.post("/rerank", json={"query": query, "texts": TEXTS, "return_text": True})
        assert got.status_code == 200, got.text
        results = got.json()
        assert [r["index"] for r in results] == [r["corpus_id"] for r in expected]
        np.testing.assert_allclose([r["score"] for r in results], [r["score"] for r in expected], atol=ATOL, rtol=0)
        assert [r["text"] for r in results] == [TEXTS[r["index"]] for r in results]
    raw = http.post("/rerank", json={"query": QUERIES[0], "texts": TEXTS, "raw_scores": True}).json()
    logits = cross_encoder.predict([[QUERIES[0], t] for t in TEXTS], activation_fn=torch.nn.Identity())
    assert set(raw[0]) == {"index", "score"}
    np.testing.assert_allclose([r["score"] for r in raw], logits[[r["index"] for r in raw]], atol=ATOL, rtol=0)
    assert (
        http.post("/", json={"query": QUERIES[0], "texts": TEXTS}).json()
        == http.post("/rerank", json={"query": QUERIES[0], "texts": TEXTS}).json()
    )


def test_v1_rerank_shape_top_n_and_usage(http, cross_encoder):
    body = {"model": "anything", "query": QUERIES[1], "documents": TEXTS, "top_n": 5, "return_documents": True}
    got = http.post("/v1/rerank", json=body)
    assert got.status_code == 200, got.text
    answer = got.json()
    expected = cross_encoder.rank(QUERIES[1], TEXTS, top_k=5)
    assert [r["index"] for r in answer["results"]] == [r["corpus_id"] for r in expected]
    np.testing.assert_allclose(
        [r["relevance_score"] for r in answer["results"]], [r["score"] for r in expected], atol=ATOL, rtol=0
    )
    assert [r["document"]["text"] for r in answer["results"]] == [TEXTS[r["index"]] for r in answer["results"]]
    assert answer["model"] == "ce-bert"
    features = cross_encoder.preprocess([[QUERIES[1], t] for t in TEXTS])
    assert answer["usage"] == {"total_tokens": int(features["attention_mask"].sum())}
    plain = http.post("/v1/rerank", json={"query": QUERIES[1], "documents": TEXTS[:3]}).json()
    assert len(plain["results"]) == 3 and set(plain["results"][0]) == {"index", "relevance_score"}


def test_rerank_errors_are_4xx_with_reasons(http):
    cases = [
        ("/rerank", {"query": "q", "texts": []}, 400, "texts must not be an empty list"),
        ("/rerank", {"query": "q", "texts": ["a"] * 33}, 400, "at most 32 per request"),
        ("/rerank", {"query": "q", "texts": ["a", "long " * 300], "truncate": False}, 400, "texts[1] with the query"),
        ("/rerank", {"query": "q", "texts": "a"}, 422, "texts"),
        ("/v1/rerank", '{"query": "\\ud800", "documents": ["a"]}', 400, "query is not valid Unicode"),
        ("/rerank", '{"query": "q", "texts": ["a", "\\udc00"]}', 400, "texts[1] is not valid Unicode"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n must be at least 1"),
    ]
    for path, body, status, message in cases:
        if isinstance(body, str):  # a lone surrogate, which only raw JSON can carry
            got = http.post(path, content=body, headers={"Content-Type": "application/json"})
        else:
            got = http.post(path, json=body)
        assert got.status_code == status, (path, body, got.text)
        assert message in got.text, got.text


def test_embedding_routes_name_the_reranker(http, server):
    for path, body in (("/embed", {"inputs": "a"}), ("/v1/embeddings", {"input": "a"}), ("/similarity", {})):
        got = http.post(path, json=body)
        assert got.status_code == 404, got.text
        assert "serves the reranking model 'ce-bert'" in got.text and "needs an embedding model" in got.text
    info = http.get("/info").json()
    assert info["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    paths = set(http.get("/openapi.json").json()["paths"])
    assert {"/rerank", "/v1/rerank", "/"} <= paths and not paths & {"/embed", "/v1/embeddings"}


def test_rerank_routes_name_the_embedder():
    """An embedding server (in-process, the bundled model) answers the rerank routes with a 404 naming itself."""
    from fastapi.testclient import TestClient

    from minilm_npu import MiniLMEncoder
    from minilm_npu.server import ServerSettings, create_app

    app = create_app(MiniLMEncoder(device="cpu"), ServerSettings())
    with TestClient(app) as client:
        for path in ("/rerank", "/v1/rerank"):
            got = client.post(path, json={"query": "q", "texts": ["a"], "documents": ["a"]})
            assert got.status_code == 404 and "serves the embedding model" in got.text, got.text
        assert "/rerank" not in client.get("/openapi.json").json()["paths"]


def test_multi_label_cross_encoder_is_refused_by_serve(st_model_dir):
    run = subprocess.run(
        [sys.executable, "-m", "minilm_npu.cli.main", "serve", "--model-path", str(st_model_dir("ce-bert-labels"))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert "error: the rerank routes give one score per text" in run.stderr and "Traceback" not in run.stderr


def test_schemathesis_finds_nothing_on_a_reranker(server, tmp_path):
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists():
        pytest.skip("the schemathesis command is not installed")
    command = [
        str(cli), "run", f"{server.url}/openapi.json", "--checks", "all", "--header", f"Authorization: Bearer {KEY}",
        "--max-examples", "15", "--seed", "20261207", "--generation-database", "none", "--workers", "1", "--no-color",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failures" not in run.stdout.lower().split("summary")[-1]
