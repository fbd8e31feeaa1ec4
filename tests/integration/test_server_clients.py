"""The real server (real model, own process) through clients nobody here wrote: huggingface_hub's
``InferenceClient(base_url=...)`` (TEI's ``POST /``), the openai client (embeddings and models), LangChain's
standard embeddings suites (langchain-tests) in-process and by URL, and Schemathesis fuzzing the published OpenAPI
document with every check. Plus TEI's per-token, truncation and decode routes against sentence-transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import EmbeddingsIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import EmbeddingsUnitTests  # noqa: E402

from minilm_npu.integrations.langchain import MiniLMEmbeddings  # noqa: E402
from tests.texts import LONG, SHORT  # noqa: E402

from .server_process import start_server  # noqa: E402

pytestmark = pytest.mark.slow
KEY = "clients-key"
NAME = "minilm-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
#: Cosines out of float32 BLAS on two different stacks (ours, torch via sentence-transformers), summed over 384
#: dimensions: 1e-5 covers the reduction-order differences.
ATOL = 1e-5


@pytest.fixture(scope="module")
def server():
    proc = start_server("--device", "cpu", "--max-client-batch-size", "32", "--served-model-name", NAME, api_key=KEY)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        yield client


def test_huggingface_inference_client(server, st_model, monkeypatch):
    """``InferenceClient(base_url=...)``, the way people point it at TEI: both tasks POST to ``/``."""
    # The suite runs with HF_HUB_OFFLINE=1 (no hub downloads), which huggingface_hub applies to any URL.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    client = huggingface_hub.InferenceClient(base_url=server.url, api_key=KEY)
    got = client.feature_extraction(SHORT[0])
    np.testing.assert_allclose(got, st_model.encode([SHORT[0]]), atol=ATOL, rtol=0)
    assert got.shape == (1, 384)
    got = client.feature_extraction(SHORT[0], normalize=False, truncate=True, truncation_direction="left")[0]
    # Unnormalised: the mean-pooled vector itself (sentence-transformers normalises whatever its flag says).
    norm = np.linalg.norm(got)
    assert abs(norm - 1) > 0.1
    np.testing.assert_allclose(got / norm, st_model.encode(SHORT[0]), atol=ATOL, rtol=0)
    scores = client.sentence_similarity(SHORT[0], other_sentences=SHORT[1:])
    vectors = st_model.encode(SHORT)
    np.testing.assert_allclose(scores, vectors[1:] @ vectors[0], atol=ATOL)
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError, match="not one of this model's prompts") as raised:
        client.feature_extraction("a", prompt_name="no-such-prompt")
    assert raised.value.response.status_code == 400
    anonymous = huggingface_hub.InferenceClient(base_url=server.url)
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as raised:
        anonymous.feature_extraction("a")
    assert raised.value.response.status_code == 401


def test_openai_client_embeddings_and_models(server, st_model):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    result = client.embeddings.create(model=NAME, input=SHORT)
    got = np.array([item.embedding for item in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, st_model.encode(SHORT), atol=ATOL, rtol=0)
    assert result.model == NAME
    assert [model.id for model in client.models.list()] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("text-embedding-3-small")
    # TEI's /embeddings: OpenAI's route without /v1, OpenAI's shapes.
    bare = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0)
    one = bare.embeddings.create(model=NAME, input=SHORT[0])
    np.testing.assert_allclose(one.data[0].embedding, st_model.encode(SHORT[0]), atol=ATOL, rtol=0)
    with pytest.raises(openai.BadRequestError, match="must not be an empty list"):
        bare.embeddings.create(model=NAME, input=[])


def test_embed_all_is_sentence_transformers_token_embeddings(http, st_model):
    texts = [SHORT[0], SHORT[1]]
    r = http.post("/embed_all", json={"inputs": texts})
    assert r.status_code == 200, r.text
    expected = st_model.encode(texts, output_value="token_embeddings")
    for got, want in zip(r.json(), expected):
        np.testing.assert_allclose(np.array(got, dtype=np.float32), want.numpy(), atol=1e-4, rtol=0)


def test_left_truncation_keeps_the_end(http, st_model, encoder):
    """sentence-transformers with its tokenizer's truncation side set to left is the reference."""
    tokenizer = st_model.tokenizer
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        expected = st_model.encode(LONG)
    finally:
        tokenizer.truncation_side = side
    r = http.post("/embed", json={"inputs": LONG, "truncation_direction": "left"})
    got = np.array(r.json(), dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    right = np.array(http.post("/embed", json={"inputs": LONG}).json(), dtype=np.float32)
    assert np.abs(got - right).max() > 0.01, "left and right truncation gave the same vectors"
    # Token ids cut the same way, [CLS] and [SEP] kept: the same vectors as the text.
    ids = encoder.tokenize(LONG, truncate=False)
    assert all(len(seq) > 256 for seq in ids)
    r = http.post("/v1/embeddings", json={"input": ids, "truncate": True})
    np.testing.assert_allclose(
        np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32), st_model.encode(LONG), atol=ATOL
    )
    r = http.post("/embed", json={"inputs": ids, "truncation_direction": "left"})
    np.testing.assert_allclose(np.array(r.json(), dtype=np.float32), expected, atol=ATOL, rtol=0)


def test_decode_and_similarity_errors(http, encoder):
    ids = encoder.tokenize(["Hello world, again."])[0]
    assert http.post("/decode", json={"ids": ids}).json() == ["hello world, again."]
    assert http.post("/decode", json={"ids": [ids], "skip_special_tokens": False}).json() == [
        "[CLS] hello world, again. [SEP]"
    ]
    for inputs, name in (
        ({"source_sentence": LONG[0], "sentences": ["a", "b"]}, "inputs.source_sentence"),
        ({"source_sentence": "a", "sentences": ["a", LONG[0]]}, "inputs.sentences[1]"),
    ):
        r = http.post("/similarity", json={"inputs": inputs, "parameters": {"truncate": False}})
        assert r.status_code == 400 and r.json()["error"].startswith(f"{name} has "), r.text


def test_docs_are_public_and_info_names_the_served_model(server, http):
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.get("/openapi.json").status_code == 200
        assert anonymous.get("/docs").status_code == 200
        assert anonymous.get("/ping").json() == {"status": "ok"} and anonymous.get("/").status_code == 200
        assert anonymous.get("/info").status_code == 401
    assert http.get("/info").json()["model_id"] == NAME


def test_schemathesis_finds_nothing(server, tmp_path):
    """Schemathesis with every check against the published document: statuses, bounds, content types, auth."""
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists():
        pytest.skip("the schemathesis command is not installed")
    command = [
        str(cli),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--max-examples",
        "15",
        "--seed",
        "20261206",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--no-color",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failures" not in run.stdout.lower().split("summary")[-1]


# -- LangChain's standard suites -------------------------------------------------------------------------------
_ENCODER = None


def _shared_encoder():
    """One encoder for every in-process standard test (each builds its own MiniLMEmbeddings around it)."""
    global _ENCODER
    if _ENCODER is None:
        from minilm_npu import MiniLMEncoder

        _ENCODER = MiniLMEncoder(device="cpu")
    return _ENCODER


class _InProcess:
    """``MiniLMEmbeddings`` around an encoder in this process."""

    @property
    def embeddings_class(self):
        return MiniLMEmbeddings

    @property
    def embedding_model_params(self):
        return {"encoder": _shared_encoder()}


class TestLangChainInProcessUnit(_InProcess, EmbeddingsUnitTests):
    pass


class TestLangChainInProcessIntegration(_InProcess, EmbeddingsIntegrationTests):
    pass


class _ByUrl:
    """The by-URL mode against the module's real server (its URL is known once the fixture has started it)."""

    url = ""

    @pytest.fixture(autouse=True)
    def _server_url(self, server):
        type(self).url = server.url

    @property
    def embeddings_class(self):
        return MiniLMEmbeddings

    @property
    def embedding_model_params(self):
        return {"url": self.url, "api_key": KEY}


class TestLangChainByUrlUnit(_ByUrl, EmbeddingsUnitTests):
    @property
    def init_from_env_params(self):
        # The server's own variable names the key when the caller does not.
        return {"MINILM_NPU_API_KEY": KEY}, {"url": "http://127.0.0.1:1"}, {}


class TestLangChainByUrlIntegration(_ByUrl, EmbeddingsIntegrationTests):
    pass
