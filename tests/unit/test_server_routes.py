"""TEI's and OpenAI's remaining routes and fields, with a fake encoder (fast, in-process): POST / by task,
/embed_all, /decode, /embeddings, /v1/models/{id}, truncation_direction, prompt_name, token-id truncation, the
fast path against FastAPI's, and the published schema against what the server enforces."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from minilm_npu.server import ServerSettings, create_app  # noqa: E402

from .server_fakes import CLS, SEP, FakeEncoder  # noqa: E402

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = " ".join(f"w{i}" for i in range(400))  # 400 words: 402 fake tokens, over the 256 limit


@pytest.fixture()
def fake():
    return FakeEncoder()


def _client(fake, **settings):
    options = {"api_key": KEY, "max_client_batch_size": 4, "served_model_name": "m", **settings}
    return TestClient(create_app(fake, ServerSettings(**options)))


@pytest.fixture()
def client(fake):
    with _client(fake) as c:
        yield c


def test_root_and_invocations_run_the_bodys_task(fake, client):
    for path in ("/", "/invocations"):
        r = client.post(path, json={"inputs": ["a b", "c"]}, headers=AUTH)
        assert (
            r.status_code == 200
            and r.json() == client.post("/embed", json={"inputs": ["a b", "c"]}, headers=AUTH).json()
        )
        body = {"inputs": {"source_sentence": "a b", "sentences": ["a b", "c"]}, "parameters": {}}
        r = client.post(path, json=body, headers=AUTH)
        assert r.status_code == 200 and r.json() == client.post("/similarity", json=body, headers=AUTH).json()
        assert r.json()[0] == pytest.approx(1.0, abs=1e-6)
        r = client.post(path, json={"inputs": 3}, headers=AUTH)
        assert r.status_code == 422 and r.json()["error_type"] == "validation"
        r = client.post(path, content=b"{", headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == "request body is not valid JSON"
        assert client.post(path, json={"inputs": "a"}).status_code == 401


def test_health_routes_are_open_and_the_rest_is_not(client):
    for path in ("/", "/ping", "/health"):
        assert client.get(path).json() == {"status": "ok"}
    assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200
    assert client.get("/info").status_code == 401 and client.get("/v1/models").status_code == 401


def test_no_docs_turns_the_description_off(fake):
    with _client(fake, docs=False) as c:
        assert c.get("/openapi.json").status_code == 404 and c.get("/docs").status_code == 404
        assert c.get("/health").status_code == 200


def test_embeddings_without_v1_is_openai(fake, client):
    r = client.post("/embeddings", json={"input": ["a b"], "model": "x"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["model"] == "m"
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], fake.expected(["a b"])[0], atol=1e-6)
    r = client.post("/embeddings", json={"input": []}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"  # OpenAI's error shape


def test_models_retrieve(client):
    assert client.get("/v1/models", headers=AUTH).json()["data"][0]["id"] == "m"
    assert client.get("/v1/models/m", headers=AUTH).json() == {
        "id": "m",
        "object": "model",
        "created": 0,
        "owned_by": "minilm-npu",
    }
    r = client.get("/v1/models/other/model", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_truncation_direction(fake, client):
    words = LONG.split()
    for direction, kept in (("right", words[:254]), ("left", words[-254:]), ("Left", words[-254:])):
        r = client.post("/embed", json={"inputs": LONG, "truncation_direction": direction}, headers=AUTH)
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()[0], fake.expected([" ".join(kept)])[0], atol=1e-6)
    r = client.post("/embed", json={"inputs": LONG, "truncation_direction": "middle"}, headers=AUTH)
    assert r.status_code == 422


def test_token_ids_are_truncated_keeping_cls_and_sep(fake, client):
    ids = fake.tokenize([LONG], truncate=False)[0]
    assert len(ids) == 402
    for direction in ("right", "left"):
        r = client.post("/embed", json={"inputs": ids, "truncation_direction": direction}, headers=AUTH)
        expected = fake.tokenize([LONG], truncation_direction=direction)[0]
        assert expected[0] == CLS and expected[-1] == SEP
        np.testing.assert_allclose(r.json()[0], fake.expected_ids([expected])[0], atol=1e-6)
    r = client.post("/v1/embeddings", json={"input": [ids], "truncate": True}, headers=AUTH)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 256
    unframed = list(range(2000, 2300))  # no [CLS]/[SEP]: a plain cut
    r = client.post("/embed", json={"inputs": unframed, "truncation_direction": "left"}, headers=AUTH)
    np.testing.assert_allclose(r.json()[0], fake.expected_ids([unframed[-256:]])[0], atol=1e-6)
    r = client.post("/embed", json={"inputs": ids, "truncate": False}, headers=AUTH)
    assert r.status_code == 400 and "at most 256" in r.json()["error"]


def test_prompt_name(fake, client):
    r = client.post("/embed", json={"inputs": "a b", "prompt_name": "search"}, headers=AUTH)
    np.testing.assert_allclose(r.json()[0], fake.expected(["search for:a b"])[0], atol=1e-6)
    r = client.post("/embed", json={"inputs": "a b", "prompt_name": "query"}, headers=AUTH)  # an empty prompt
    np.testing.assert_allclose(r.json()[0], fake.expected(["a b"])[0], atol=1e-6)
    r = client.post("/tokenize", json={"inputs": "a", "prompt_name": "search"}, headers=AUTH)
    assert [t["id"] for t in r.json()[0]] == fake.tokenize(["search for:a"])[0]
    bad = [
        ("/embed", {"inputs": "a", "prompt_name": "no-such-prompt"}),
        ("/embed_all", {"inputs": "a", "prompt_name": "no-such-prompt"}),
        ("/tokenize", {"inputs": "a", "prompt_name": "no-such-prompt"}),
        ("/", {"inputs": "a", "prompt_name": "no-such-prompt"}),
        ("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {"prompt_name": "x"}}),
    ]
    for path, body in bad:
        r = client.post(path, json=body, headers=AUTH)
        assert r.status_code == 400, (path, r.text)
        assert "not one of this model's prompts (document, query, search)" in r.json()["error"]
    r = client.post("/embed", json={"inputs": [CLS, 2000, SEP], "prompt_name": "search"}, headers=AUTH)
    assert r.status_code == 400 and "token ids" in r.json()["error"]


def test_similarity_names_the_over_long_sentence(client):
    cases = [
        ({"source_sentence": LONG, "sentences": ["a", "b"]}, "inputs.source_sentence has 402 tokens"),
        ({"source_sentence": "a", "sentences": ["a", LONG]}, "inputs.sentences[1] has 402 tokens"),
    ]
    for inputs, message in cases:
        r = client.post("/similarity", json={"inputs": inputs, "parameters": {"truncate": False}}, headers=AUTH)
        assert r.status_code == 400 and r.json()["error"].startswith(message), r.text


def test_embed_all_and_decode(fake, client):
    r = client.post("/embed_all", json={"inputs": ["a b", "c"]}, headers=AUTH)
    assert r.status_code == 200
    got = r.json()
    for text, states in zip(["a b", "c"], got):
        expected = fake.workers[0].run_tokens(fake.tokenize([text]))[0]
        np.testing.assert_allclose(np.array(states), expected, atol=1e-6)
    ids = fake.tokenize(["a b"])[0]
    assert client.post("/decode", json={"ids": ids}, headers=AUTH).json() == [fake.decode(ids)]
    r = client.post("/decode", json={"ids": [ids, ids], "skip_special_tokens": False}, headers=AUTH)
    assert r.json() == [fake.decode(ids, skip_special_tokens=False)] * 2
    assert client.post("/decode", json={"ids": []}, headers=AUTH).json() == [""]
    for body, status in (({"ids": [[1]] * 5}, 400), ({"ids": [10**6]}, 400), ({"ids": "a"}, 422)):
        assert client.post("/decode", json=body, headers=AUTH).status_code == status


REQUESTS = [
    ("/v1/embeddings", {"input": ["a b", "c"], "encoding_format": "base64"}),
    ("/v1/embeddings", {"input": "", "dimensions": 0}),
    ("/v1/embeddings", {"input": [[]]}),
    ("/v1/embeddings", {"input": {"x": 1}}),
    ("/embeddings", {"input": "a", "dimensions": 8}),
    ("/embed", {"inputs": ["a", "b"], "normalize": False, "truncation_direction": "left"}),
    ("/embed", {"inputs": ["a"] * 5}),
    ("/embed", {"inputs": "a", "prompt_name": "nope"}),
    ("/", {"inputs": {"source_sentence": "a", "sentences": ["b", "a"]}}),
    ("/invocations", {"inputs": "a", "normalize": "yes"}),
    ("/", [1, 2]),
]


@pytest.mark.parametrize("path, body", REQUESTS)
def test_the_fast_path_answers_as_fastapi_does(path, body):
    answers = []
    for fast_path in (True, False):
        with _client(FakeEncoder(), fast_path=fast_path) as c:
            r = c.post(path, json=body, headers=AUTH)
            answers.append((r.status_code, r.headers["content-type"], r.content))
    assert answers[0] == answers[1]


def test_the_schema_states_this_servers_bounds(fake):
    with _client(fake, max_client_batch_size=7, docs=True) as c:
        schema = c.get("/openapi.json").json()
    parts = schema["components"]["schemas"]
    embed = parts["TEIEmbedRequest"]["properties"]
    texts = next(s for s in embed["inputs"]["anyOf"] if s.get("items") == {"type": "string"})
    assert (texts["minItems"], texts["maxItems"]) == (1, 7)
    assert (embed["dimensions"]["minimum"], embed["dimensions"]["maximum"]) == (1, 384)
    assert embed["prompt_name"]["enum"] == ["document", "query", "search", None]
    ids = next(s for s in embed["inputs"]["anyOf"] if s.get("items", {}).get("type") == "integer")
    assert (ids["items"]["minimum"], ids["items"]["maximum"]) == (0, 30521)
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    paths = schema["paths"]
    assert "security" not in paths["/health"]["get"] and "security" not in paths["/"]["get"]
    assert paths["/"]["post"]["security"] == [{"bearer": []}]
    assert set(paths["/v1/embeddings"]["post"]["responses"]) == {"200", "400", "401", "413", "422", "429", "500", "503"}
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


def test_every_answered_status_is_in_the_schema(fake, client):
    """What Schemathesis's status_code_conformance checks, for the cases it found: each answer's status is one
    its route documents (the schema was missing 400, 401, 413, 429 and 503 before)."""
    schema = client.get("/openapi.json").json()["paths"]
    cases = [
        ("post", "/v1/embeddings", {"input": "", "dimensions": 0}, AUTH, 400),
        ("post", "/v1/embeddings", {"input": "a"}, {}, 401),
        ("post", "/embed", {"inputs": "x" * 5000}, AUTH, 413),
        ("post", "/embed", {"inputs": []}, AUTH, 400),
        ("post", "/embed_all", {"inputs": ["a"] * 5}, AUTH, 400),
        ("post", "/similarity", {"inputs": {"source_sentence": "a", "sentences": []}}, AUTH, 400),
        ("post", "/decode", {"ids": [-1]}, AUTH, 400),
        ("get", "/v1/models/x", None, AUTH, 404),
    ]
    with _client(fake, max_body_bytes=4096) as small:
        for method, path, body, headers, status in cases:
            r = small.request(method.upper(), path, json=body, headers=headers)
            assert r.status_code == status, (path, r.text)
            documented = schema[path if path != "/v1/models/x" else "/v1/models/{model_id}"][method]["responses"]
            assert str(status) in documented, (path, status)


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_lone_surrogate_is_a_400_naming_the_input_on_both_paths(fake, fast_path):
    """Valid JSON (a "\\ud800" escape) that is not valid Unicode: pydantic-core's parser refuses the body, the
    standard library's reads it, and the input is named as on every route (not "invalid JSON")."""
    headers = {**AUTH, "Content-Type": "application/json"}
    with _client(fake, fast_path=fast_path) as c:
        for path, raw, name in (
            ("/v1/embeddings", '{"input": ["fine", "bad \\ud800"]}', "input[1]"),
            ("/embed", '{"inputs": "\\udfff"}', "inputs"),
            ("/", '{"inputs": ["ok", "\\ud800"]}', "inputs[1]"),
        ):
            r = c.post(path, content=raw, headers=headers)
            assert r.status_code == 400, r.text
            message = r.json()["error"]["message"] if path.startswith("/v1") else r.json()["error"]
            assert message.startswith(f"{name} ")


def test_schemathesis_found_cases(fake, client):
    """The cases Schemathesis found, kept as plain tests."""
    # JSON Schema's integers include 7.0: token ids and dimensions sent that way are accepted; 7.5 is not.
    ids = fake.tokenize(["a b"])[0]
    r = client.post("/v1/embeddings", json={"input": [float(i) for i in ids], "dimensions": 8.0}, headers=AUTH)
    assert r.status_code == 200, r.text
    full = fake.expected(["a b"], normalize=False)[0][:8]
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], full / np.linalg.norm(full), atol=1e-6)
    r = client.post("/v1/embeddings", json={"input": [101.5]}, headers=AUTH)
    assert r.status_code == 422 and "list[int]" in r.json()["error"]["message"]
    # A bound the schema states (dimensions >= 1) is a 4xx, documented.
    assert client.post("/v1/embeddings", json={"input": "", "dimensions": 0}, headers=AUTH).status_code == 400
    # A method the path does not serve: 405 naming every method the path serves ("/" has GET and POST, the health
    # route and the task).
    r = client.request("OPTIONS", "/", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    r = client.put("/v1/embeddings", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    # Prometheus text, as documented (not application/json).
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
