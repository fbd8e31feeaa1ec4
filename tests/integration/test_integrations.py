"""LangChain and LlamaIndex adapters against the real frameworks: vectors, async forms, an in-memory retrieval each,
and the by-URL mode against a real ``minilm-npu serve``."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402
from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402

from minilm_npu.integrations.langchain import MiniLMEmbeddings  # noqa: E402
from minilm_npu.integrations.llamaindex import MiniLMEmbedding  # noqa: E402
from minilm_npu.integrations.source import ServerError  # noqa: E402

from .server_process import start_server  # noqa: E402

ATOL = 1e-5
DOCS = [
    "The cat sits on the mat.",
    "Stock markets fell sharply today.",
    "A man is playing a guitar.",
    "Paris is the capital of France.",
]
QUERY, ANSWER = "Which animal is resting on the rug?", DOCS[0]
KEY = "adapter-key"


@pytest.fixture(scope="module")
def expected(st_model):
    """sentence-transformers' vectors for the documents and the query."""
    return st_model.encode(DOCS), st_model.encode(QUERY)


def check_vectors(docs, query, expected):
    assert isinstance(docs, list) and all(isinstance(v, list) and isinstance(v[0], float) for v in docs)
    np.testing.assert_allclose(np.array(docs), expected[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.array(query), expected[1], atol=ATOL, rtol=0)


def check_langchain(embeddings, expected):
    check_vectors(embeddings.embed_documents(DOCS), embeddings.embed_query(QUERY), expected)
    check_vectors(asyncio.run(embeddings.aembed_documents(DOCS)), asyncio.run(embeddings.aembed_query(QUERY)), expected)
    assert embeddings.embed_documents([]) == []


def check_llamaindex(embedding, expected):
    check_vectors(embedding.get_text_embedding_batch(DOCS), embedding.get_query_embedding(QUERY), expected)
    check_vectors([embedding.get_text_embedding(d) for d in DOCS], embedding.get_query_embedding(QUERY), expected)
    check_vectors(
        asyncio.run(embedding.aget_text_embedding_batch(DOCS)),
        asyncio.run(embedding.aget_query_embedding(QUERY)),
        expected,
    )


def test_langchain_vectors(encoder, expected):
    check_langchain(MiniLMEmbeddings(encoder), expected)


def test_langchain_in_memory_retrieval(encoder, expected):
    store = InMemoryVectorStore.from_texts(DOCS, MiniLMEmbeddings(encoder))
    (top, score), *rest = store.similarity_search_with_score(QUERY, k=2)
    assert top.page_content == ANSWER and len(rest) == 1
    assert score == pytest.approx(float(expected[0][0] @ expected[1]), abs=ATOL)


def test_llamaindex_vectors(encoder, expected):
    embedding = MiniLMEmbedding(encoder, embed_batch_size=3)  # LlamaIndex splits the 4 texts into two calls
    assert embedding.model_name == encoder.model_name
    check_llamaindex(embedding, expected)


def test_llamaindex_vector_store_retrieval(encoder, expected):
    # Nodes in directly: the default document parser would fetch a tiktoken vocabulary from the network.
    index = VectorStoreIndex([TextNode(text=d) for d in DOCS], embed_model=MiniLMEmbedding(encoder))
    top, *rest = index.as_retriever(similarity_top_k=2).retrieve(QUERY)
    assert top.node.get_content() == ANSWER and len(rest) == 1
    assert top.score == pytest.approx(float(expected[0][0] @ expected[1]), abs=ATOL)


def test_encoder_and_url_together_is_an_error(encoder):
    with pytest.raises(ValueError, match="not both"):
        MiniLMEmbeddings(encoder, url="http://127.0.0.1:1")


@pytest.fixture(scope="module")
def server():
    proc = start_server("--device", "cpu", api_key=KEY)
    yield proc
    proc.stop()


@pytest.mark.slow
def test_by_url(server, expected):
    # batch_size=3: the 4 documents go as two requests, and must come back in order.
    check_langchain(MiniLMEmbeddings(url=server.url, api_key=KEY, batch_size=3), expected)
    embedding = MiniLMEmbedding(url=server.url + "/", api_key=KEY)
    check_llamaindex(embedding, expected)
    top = (
        VectorStoreIndex([TextNode(text=d) for d in DOCS], embed_model=embedding)
        .as_retriever(similarity_top_k=1)
        .retrieve(QUERY)[0]
    )
    assert top.node.get_content() == ANSWER


@pytest.mark.slow
def test_by_url_errors_say_what_happened(server):
    with pytest.raises(ServerError, match="401"):
        MiniLMEmbeddings(url=server.url).embed_query("hi")
    with pytest.raises(ServerError, match="cannot reach"):
        MiniLMEmbeddings(url="http://127.0.0.1:9", timeout=5).embed_query("hi")
