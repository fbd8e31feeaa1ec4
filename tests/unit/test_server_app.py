"""Server plumbing with a fake encoder: routes, shapes, every edge error, auth, metrics (fast, in-process)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from minilm_npu.server import ServerSettings, create_app  # noqa: E402

from .server_fakes import FakeEncoder  # noqa: E402

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture()
def fake():
    return FakeEncoder()


@pytest.fixture()
def client(fake):
    settings = ServerSettings(api_key=KEY, max_client_batch_size=4, max_body_bytes=4096, served_model_name="m")
    with TestClient(create_app(fake, settings)) as c:
        yield c


def _vectors(response) -> np.ndarray:
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def test_startup_warms_up(fake, client):
    assert fake.warmed and fake.batches  # warmup() and one probe forward before serving


def test_startup_leaves_one_openmp_pool(monkeypatch):
    """The loading thread and the warm-up thread release their OpenMP workers: only the batcher's run forwards."""
    import threading

    from minilm_npu.server import app as app_module

    released = []
    monkeypatch.setattr(app_module, "release_host_threads", lambda: released.append(threading.get_ident()))
    encoder = FakeEncoder()
    with TestClient(create_app(encoder, ServerSettings())):
        assert encoder.warmed and len(released) == 2 and len(set(released)) == 2


def test_release_host_threads_leaves_torch_working():
    import torch

    from minilm_npu.devices import release_host_threads

    torch.ones(100_000).add(1).sum()  # a parallel region on this thread first
    try:
        with open("/proc/self/maps", encoding="utf-8") as handle:
            openmp_loaded = any("libgomp" in line or "libiomp5" in line or "/libomp" in line for line in handle)
    except OSError:
        openmp_loaded = False
    assert release_host_threads() is openmp_loaded  # torch's x86 Linux wheels ship libgomp: True there
    assert torch.ones(100_000).add(1).sum().item() == 200_000  # the pool comes back when needed


def test_openai_float_and_order(fake, client):
    texts = ["b c d", "a", "", "x y"]
    r = client.post("/v1/embeddings", json={"input": texts, "model": "whatever"}, headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "m"
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    np.testing.assert_allclose(_vectors(r), fake.expected(texts), atol=1e-6)
    tokens = sum(len(t) for t in fake.tokenize(texts))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_openai_base64_and_single_string(fake, client):
    r = client.post("/v1/embeddings", json={"input": "hello there", "encoding_format": "base64"}, headers=AUTH)
    assert r.status_code == 200
    data = r.json()["data"]
    assert len(data) == 1
    vec = np.frombuffer(base64.b64decode(data[0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, fake.expected(["hello there"])[0], atol=1e-6)


def test_openai_token_ids_and_dimensions(fake, client):
    ids = fake.tokenize(["a b"])[0]
    one = client.post("/v1/embeddings", json={"input": ids}, headers=AUTH)
    many = client.post("/v1/embeddings", json={"input": [ids, ids]}, headers=AUTH)
    assert one.status_code == many.status_code == 200
    np.testing.assert_allclose(_vectors(one)[0], fake.expected(["a b"])[0], atol=1e-6)
    assert _vectors(many).shape == (2, 384)
    r = client.post("/v1/embeddings", json={"input": "a b", "dimensions": 8}, headers=AUTH)
    vec = _vectors(r)[0]
    full = fake.expected(["a b"], normalize=False)[0][:8]
    np.testing.assert_allclose(vec, full / np.linalg.norm(full), atol=1e-6)


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"input": []}, 400, "must not be an empty list"),
        ({"input": ["a"] * 5}, 400, "at most 4"),
        ({"input": " ".join(["w"] * 300), "truncate": False}, 400, "at most 256"),
        ({"input": [[101] * 300], "truncate": False}, 400, "at most 256"),
        ({"input": [[101, 40000]]}, 400, "not a token id"),
        ({"input": [[]]}, 400, "empty list of token ids"),
        ({"input": "a", "dimensions": 385}, 400, "between 1 and 384"),
        ({"input": [1.5]}, 422, "expected one of"),
        ({"input": ["a", 1]}, 422, "expected one of"),
        ({"input": True}, 422, "expected one of"),
        ({"input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
        ({}, 422, "input"),
    ],
)
def test_openai_errors(client, body, status, fragment):
    r = client.post("/v1/embeddings", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert "Traceback" not in r.text


def test_long_input_is_truncated_by_default(fake, client):
    text = " ".join(f"w{i}" for i in range(400))
    r = client.post("/v1/embeddings", json={"input": text}, headers=AUTH)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 256


def test_malformed_json_is_422(client):
    r = client.post("/v1/embeddings", content=b"{nope", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/embed", content=b"{nope", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error_type"] == "validation"


def test_body_limit_is_413_in_both_styles(client):
    big = {"input": "a " * 5000}
    r = client.post("/v1/embeddings", json=big, headers=AUTH)
    assert r.status_code == 413 and "4096" in r.json()["error"]["message"]
    r = client.post("/embed", json={"inputs": "a " * 5000}, headers=AUTH)
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(10):
            yield b"x" * 1000

    r = client.post("/embed", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413


def test_auth(client):
    assert client.post("/v1/embeddings", json={"input": "a"}).status_code == 401
    r = client.post("/v1/embeddings", json={"input": "a"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = client.post("/embed", json={"inputs": "a"}, headers={"Authorization": "Basic s3cret"})
    assert r.status_code == 401 and r.json()["error_type"] == "auth"
    assert client.get("/info").status_code == 401
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_no_key_configured_means_open(fake):
    with TestClient(create_app(fake)) as c:
        assert c.post("/embed", json={"inputs": "a"}).status_code == 200


def test_tei_embed(fake, client):
    r = client.post("/embed", json={"inputs": ["a b", "c"]}, headers=AUTH)
    assert r.status_code == 200
    np.testing.assert_allclose(np.array(r.json(), dtype=np.float32), fake.expected(["a b", "c"]), atol=1e-6)
    r = client.post("/embed", json={"inputs": "a b", "normalize": False}, headers=AUTH)
    np.testing.assert_allclose(np.array(r.json()[0], dtype=np.float32), fake.expected(["a b"], False)[0], rtol=1e-6)
    r = client.post("/embed", json={"inputs": []}, headers=AUTH)
    assert r.status_code == 400 and r.json() == {"error": "inputs must not be an empty list", "error_type": "empty"}


def test_tei_similarity(fake, client):
    body = {"inputs": {"source_sentence": "a b", "sentences": ["a b", "c d", "e"]}}
    r = client.post("/similarity", json=body, headers=AUTH)
    assert r.status_code == 200
    e = fake.expected(["a b", "a b", "c d", "e"])
    np.testing.assert_allclose(r.json(), e[1:] @ e[0], atol=1e-6)
    assert r.json()[0] == pytest.approx(1.0, abs=1e-6)
    r = client.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": []}}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error_type"] == "empty"
    r = client.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": ["b"] * 5}}, headers=AUTH)
    assert r.status_code == 400 and "at most 4" in r.json()["error"]


def test_tei_tokenize(fake, client):
    r = client.post("/tokenize", json={"inputs": "a b"}, headers=AUTH)
    assert r.status_code == 200
    tokens = r.json()[0]
    assert [t["id"] for t in tokens] == fake.tokenize(["a b"])[0]
    assert [t["special"] for t in tokens] == [True, False, False, True]
    r = client.post("/tokenize", json={"inputs": ["a b"], "add_special_tokens": False}, headers=AUTH)
    assert [t["text"] for t in r.json()[0]] == [f"tok{i}" for i in fake.tokenize(["a b"])[0][1:-1]]


def test_info_and_models(client):
    info = client.get("/info", headers=AUTH).json()
    assert info["model_id"] == "m" and info["dimension"] == 384 and info["max_input_length"] == 256
    assert info["max_client_batch_size"] == 4 and info["devices"] == ["cpu"] and info["auth_required"] is True
    models = client.get("/v1/models", headers=AUTH).json()
    assert models["data"][0]["id"] == "m"


def test_unknown_route_and_method(client):
    r = client.get("/v1/nothing", headers=AUTH)
    assert r.status_code == 404 and "error" in r.json() and r.json()["error"]["type"]
    assert client.get("/embed", headers=AUTH).status_code == 405


def test_health_503_when_model_cannot_answer(fake, client):
    fake.fail = True
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["error_type"] == "unhealthy"
    r = client.post("/v1/embeddings", json={"input": "a"}, headers=AUTH)
    assert r.status_code == 500 and "device lost" in r.json()["error"]["message"] and "Traceback" not in r.text
    fake.fail = False
    assert client.get("/health").status_code == 200


def test_metrics_exported(client):
    client.post("/v1/embeddings", json={"input": ["a", "b"]}, headers=AUTH)
    client.post("/v1/embeddings", json={"input": []}, headers=AUTH)
    text = client.get("/metrics").text
    assert 'minilm_requests_total{route="/v1/embeddings",status="200"} 1.0' in text
    assert 'minilm_requests_total{route="/v1/embeddings",status="400"} 1.0' in text
    for name in (
        "minilm_request_duration_seconds_bucket",
        "minilm_queue_seconds_count",
        "minilm_inference_seconds_count",
        "minilm_batch_size_bucket",
        "minilm_batch_tokens_bucket",
        "minilm_queue_depth",
        "minilm_requests_in_flight",
    ):
        assert name in text
    if Path("/proc/self/status").exists():  # prometheus-client's process collector reads /proc (Linux)
        rss = [line for line in text.splitlines() if line.startswith("process_resident_memory_bytes ")]
        assert rss and float(rss[0].split()[1]) > 10 * 2**20


def test_two_apps_in_one_process(fake):
    with TestClient(create_app(fake)) as a, TestClient(create_app(FakeEncoder())) as b:
        assert a.get("/metrics").status_code == b.get("/metrics").status_code == 200


def test_startup_fails_when_warmup_fails():
    broken = FakeEncoder()
    broken.fail = True
    with pytest.raises(RuntimeError, match="warm-up failed"):
        with TestClient(create_app(broken, ServerSettings(health_timeout_s=1.0))):
            pass


def test_large_request_through_the_tokenizer_pool_matches_small_ones(fake, client, monkeypatch):
    """Over Batcher.INLINE_WORK characters the work moves off the event loop into the tokenizer pool (its threads
    are named minilm-tokenize); the answer must not change."""
    import threading

    tokenized_on = []
    tokenize = fake.tokenize

    def spy(*args, **kwargs):
        tokenized_on.append(threading.current_thread().name)
        return tokenize(*args, **kwargs)

    monkeypatch.setattr(fake, "tokenize", spy)
    texts = [" ".join(f"w{i}_{j}" for j in range(130)) for i in range(4)]
    assert sum(map(len, texts)) > client.app.state.server.batcher.INLINE_WORK
    assert all(len(t) <= client.app.state.server.batcher.INLINE_WORK for t in texts)
    large = client.post("/v1/embeddings", json={"input": texts}, headers=AUTH)
    assert len(tokenized_on) == 1 and tokenized_on[0].startswith("minilm-tokenize")
    small = [client.post("/v1/embeddings", json={"input": t}, headers=AUTH) for t in texts]
    assert len(tokenized_on) == 5 and not any(name.startswith("minilm-tokenize") for name in tokenized_on[1:])
    assert large.status_code == 200 and all(r.status_code == 200 for r in small)
    np.testing.assert_allclose(_vectors(large), fake.expected(texts), atol=1e-6)
    np.testing.assert_array_equal(_vectors(large), np.concatenate([_vectors(r) for r in small]))


def test_json_body_reads_back_as_the_standard_library_writes_it():
    import json

    from minilm_npu.server.vectors import json_body

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((8, 384)) * np.array([[1], [1e-3], [1e-6], [1e-9], [1], [1], [1], [1]])
    payload = {
        "data": [{"index": i, "embedding": v} for i, v in enumerate(vectors.astype(np.float32).tolist())],
        "model": "m",
    }
    assert json.loads(json_body(payload)) == json.loads(json.dumps(payload))  # the same doubles, bit for bit
    # NaN/inf (a broken model) keep the standard library's spelling instead of orjson's null.
    assert json_body([float("nan"), 1.0], finite=False) == b"[NaN,1.0]"
