"""The real server (real model, CPU) in a subprocess: the official openai client, httpx for every edge error and
the TEI routes, and 64 concurrent clients that must each get exactly their own vectors."""

from __future__ import annotations

import base64
import random
import signal
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from tests.texts import ALL, LONG, MEDIUM, SHORT  # noqa: E402

from .server_process import start_server  # noqa: E402

pytestmark = pytest.mark.slow
KEY = "integration-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    proc = start_server(
        "--device",
        "cpu",
        "--max-client-batch-size",
        "64",
        "--max-concurrent-requests",
        "64",
        "--max-body-bytes",
        "100000",
        "--served-model-name",
        "minilm",
        api_key=KEY,
    )
    yield proc
    # uvicorn shuts down cleanly, then re-raises the signal so the exit status says "terminated".
    assert proc.stop() in (0, -signal.SIGTERM), "".join(proc.log[-20:])
    assert any("Application shutdown complete" in line for line in proc.log)


@pytest.fixture(scope="module")
def expected_all(encoder):
    return encoder.encode(ALL)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client


@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_openai_client_matches_encoder(server, encoder, expected_all, encoding_format):
    """None: the client's default, which asks for base64 and decodes it itself; "base64" returns the strings."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    extra = {"encoding_format": encoding_format} if encoding_format else {}
    result = client.embeddings.create(model="minilm", input=ALL, **extra)
    if encoding_format == "base64":
        got = np.stack([np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in result.data])
    else:
        got = np.array([item.embedding for item in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected_all, atol=1e-6, rtol=0)
    assert result.model == "minilm" and [d.index for d in result.data] == list(range(len(ALL)))
    tokens = sum(len(ids) for ids in encoder.tokenize(ALL))
    assert result.usage.prompt_tokens == result.usage.total_tokens == tokens


def test_openai_token_ids_and_dimensions(http, encoder):
    ids = encoder.tokenize(SHORT)
    r = http.post("/v1/embeddings", json={"input": ids})
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, encoder.encode(SHORT), atol=1e-6, rtol=0)
    r = http.post("/v1/embeddings", json={"input": SHORT[0], "dimensions": 64})
    vec = np.array(r.json()["data"][0]["embedding"], dtype=np.float32)
    full = encoder.encode(SHORT[0], normalize_embeddings=False)[:64]
    np.testing.assert_allclose(vec, full / np.linalg.norm(full), atol=1e-6)


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"input": []}, 400, "must not be an empty list"),
        ({"input": ["a"] * 65}, 400, "at most 64"),
        ({"input": LONG[0], "truncate": False}, 400, "at most 256"),
        ({"input": [[101] + [2000] * 300 + [102]], "truncate": False}, 400, "at most 256"),
        ({"input": [[101, 10**6, 102]]}, 400, "not a token id"),
        ({"input": {"text": "a"}}, 422, "expected one of"),
        ({"input": "a " * 60000}, 413, "100000 bytes"),
    ],
)
def test_openai_errors(http, body, status, fragment):
    r = http.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"] and "Traceback" not in r.text


def test_empty_string_is_embedded_and_long_is_truncated(http, encoder):
    r = http.post("/v1/embeddings", json={"input": ["", LONG[0], MEDIUM[0]]})
    assert r.status_code == 200
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, encoder.encode(["", LONG[0], MEDIUM[0]]), atol=1e-6, rtol=0)


def test_malformed_json_and_auth(server, http):
    r = http.post("/v1/embeddings", content=b'{"input": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "request body is not valid JSON"
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.post("/v1/embeddings", json={"input": "a"}).status_code == 401
        r = anonymous.post("/embed", json={"inputs": "a"}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error_type"] == "auth"
        assert anonymous.get("/health").json() == {"status": "ok"}
        assert "minilm_requests_total" in anonymous.get("/metrics").text


def test_openai_client_raises_on_bad_key(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model="minilm", input="a")


def test_tei_routes(http, encoder):
    r = http.post("/embed", json={"inputs": SHORT})
    np.testing.assert_allclose(np.array(r.json(), dtype=np.float32), encoder.encode(SHORT), atol=1e-6, rtol=0)
    r = http.post("/embed", json={"inputs": SHORT[0], "normalize": False})
    np.testing.assert_allclose(
        np.array(r.json()[0], dtype=np.float32), encoder.encode(SHORT[0], normalize_embeddings=False), atol=1e-5, rtol=0
    )
    r = http.post("/embed", json={"inputs": LONG, "truncate": False})
    assert r.status_code == 400 and r.json()["error_type"] == "validation" and "256" in r.json()["error"]
    r = http.post("/embed", json={"inputs": "a", "normalize": "yes"})
    assert r.status_code == 422 and r.json()["error_type"] == "validation"

    sentences = ["A man is playing a guitar.", "A woman is slicing an onion.", "Someone plays guitar."]
    r = http.post(
        "/similarity", json={"inputs": {"source_sentence": "A man plays the guitar.", "sentences": sentences}}
    )
    e = encoder.encode(["A man plays the guitar.", *sentences])
    np.testing.assert_allclose(r.json(), e[1:] @ e[0], atol=1e-5)

    r = http.post("/tokenize", json={"inputs": ["hello world"]})
    tokens = r.json()[0]
    assert [t["text"] for t in tokens] == ["[CLS]", "hello", "world", "[SEP]"]
    assert [t["id"] for t in tokens] == encoder.tokenize(["hello world"])[0]


def test_info_and_metrics(http):
    info = http.get("/info").json()
    assert info["model_id"] == "minilm" and info["dimension"] == 384 and info["max_input_length"] == 256
    assert info["devices"] == ["cpu"] and info["max_client_batch_size"] == 64
    text = http.get("/metrics").text
    for name in (
        "minilm_queue_seconds_count",
        "minilm_inference_seconds_count",
        "minilm_batch_tokens_sum",
        'route="/v1/embeddings",status="200"',
    ):
        assert name in text


def test_64_concurrent_clients_get_their_own_vectors(server, encoder):
    rng = random.Random(5)
    pool = SHORT + [" ".join(["word"] * n) + f" {i}" for i, n in enumerate(range(1, 60, 6))]
    batches = [[f"client {c}: {rng.choice(pool)}" for _ in range(rng.randint(1, 4))] for c in range(64)]

    def call(texts):
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
            r = client.post("/v1/embeddings", json={"input": texts})
            r.raise_for_status()
            return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)

    with ThreadPoolExecutor(64) as executor:
        results = list(executor.map(call, batches))
    flat = [t for texts in batches for t in texts]
    expected = encoder.encode(flat)
    start = 0
    for texts, got in zip(batches, results):
        np.testing.assert_allclose(got, expected[start : start + len(texts)], atol=1e-6, rtol=0)
        start += len(texts)


def test_overload_is_429_and_nothing_else_fails(server):
    # 100 requests arrive while the first device batch (seconds on a CPU) runs: 64 are admitted, the rest 429.
    body = {"input": MEDIUM[0]}

    def call(_):
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
            r = client.post("/v1/embeddings", json=body)
            return r.status_code, r.json()

    with ThreadPoolExecutor(100) as executor:
        results = list(executor.map(call, range(100)))
    codes = [code for code, _ in results]
    assert set(codes) <= {200, 429} and 200 in codes and 429 in codes
    rejected = next(body for code, body in results if code == 429)
    assert "--max-concurrent-requests" in rejected["error"]["message"]
    assert rejected["error"]["type"] == "rate_limit_error"


def test_two_cpu_workers_serve_concurrent_clients_exactly(st_model):
    """--device cpu,cpu: two workers, each on its share of the cores, running batches side by side; every client
    still gets exactly its own vectors, within 1e-5 of sentence-transformers."""
    proc = start_server("--device", "cpu,cpu", "--max-concurrent-requests", "64")
    try:
        rng = random.Random(7)
        batches = [[f"worker test {c}: {rng.choice(ALL)}" for _ in range(rng.randint(1, 3))] for c in range(32)]

        def call(texts):
            with httpx.Client(base_url=proc.url, timeout=120) as client:
                r = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "float"})
                r.raise_for_status()
                return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)

        with ThreadPoolExecutor(32) as executor:
            results = list(executor.map(call, batches))
        info = httpx.get(proc.url + "/info", timeout=30).json()
    finally:
        status = proc.stop()
    assert status in (0, -signal.SIGTERM) and not any("terminate called" in line for line in proc.log), proc.log[-20:]
    expected = st_model.encode([t for texts in batches for t in texts])
    np.testing.assert_allclose(np.concatenate(results), expected, atol=1e-5, rtol=0)
    assert info["devices"] == ["cpu", "cpu"]
