"""The encoder equals sentence-transformers: every length class, both backends, order and batch invariance."""

from __future__ import annotations

import numpy as np
import pytest

from tests import texts

ATOL = 1e-5
HELLO_WORLD_PREFIX = [-0.034478, 0.03102, 0.00673, 0.02611, -0.039362]  # published by another project

CLASSES = {
    "short": texts.SHORT,
    "chinese": texts.CHINESE,
    "french": texts.FRENCH,
    "emoji": texts.EMOJI,
    "whitespace_and_empty": texts.EMPTYISH,
    "medium_129_256_tokens": texts.MEDIUM,
    "long_over_256": texts.LONG,
}


@pytest.fixture(scope="module")
def st_all(st_model):
    return st_model.encode(texts.ALL, convert_to_numpy=True)


@pytest.fixture(params=["encoder", "reference_encoder"])
def any_encoder(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("name", list(CLASSES))
def test_matches_sentence_transformers(any_encoder, st_model, name):
    batch = CLASSES[name]
    ours = any_encoder.encode(batch)
    reference = st_model.encode(batch, convert_to_numpy=True)
    assert ours.shape == (len(batch), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=ATOL, rtol=0)


def test_medium_texts_really_are_between_128_and_256_tokens(encoder):
    lengths = [len(ids) for ids in encoder.tokenize(texts.MEDIUM, truncate=False)]
    assert all(128 < n <= 256 for n in lengths), lengths
    assert all(len(ids) > 256 for ids in encoder.tokenize(texts.LONG, truncate=False))
    assert all(len(ids) == 256 for ids in encoder.tokenize(texts.LONG))


def test_hello_world_prefix(any_encoder):
    vector = any_encoder.encode("hello world")
    assert vector.shape == (384,)
    np.testing.assert_allclose(vector[:5], HELLO_WORLD_PREFIX, atol=1e-5)


def test_all_mixed_in_one_batch_keeps_order(any_encoder, st_all):
    ours = any_encoder.encode(texts.ALL, batch_size=7)
    np.testing.assert_allclose(ours, st_all, atol=ATOL, rtol=0)


def test_batch_invariance(any_encoder):
    batched = any_encoder.encode(texts.ALL, batch_size=64)
    for index, text in enumerate(texts.ALL):
        alone = any_encoder.encode([text])[0]
        np.testing.assert_allclose(alone, batched[index], atol=1e-6, rtol=0, err_msg=repr(text))


def test_unnormalized_vectors_have_the_pooled_norm(any_encoder, st_model):
    ours = any_encoder.encode(texts.SHORT, normalize_embeddings=False)
    # sentence-transformers without its Normalize module: transformer + pooling only.
    reference = st_model.encode(texts.SHORT, output_value="sentence_embedding", normalize_embeddings=False)
    norms = np.linalg.norm(ours, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    np.testing.assert_allclose(ours / norms[:, None], reference / np.linalg.norm(reference, axis=1)[:, None], atol=ATOL)


def test_encode_token_ids_equals_encode(encoder):
    ids = encoder.tokenize(texts.SHORT + texts.MEDIUM)
    np.testing.assert_allclose(encoder.encode_token_ids(ids), encoder.encode(texts.SHORT + texts.MEDIUM), atol=1e-6)


def test_attributes(encoder):
    assert encoder.dimension == 384
    assert encoder.max_seq_length == 256
    assert str(encoder.device) == "cpu"
    assert encoder.encode([]).shape == (0, 384)


@pytest.mark.parametrize("bad", [[1, 2], b"x", [None], 42])
def test_bad_sentences_are_input_errors(encoder, bad):
    from minilm_npu.errors import InputError

    with pytest.raises(InputError):
        encoder.encode(bad)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_bad_batch_size(encoder, batch_size):
    from minilm_npu.errors import InputError

    with pytest.raises(InputError, match="batch_size"):
        encoder.encode(["x"], batch_size=batch_size)


def test_bad_token_ids(encoder):
    from minilm_npu.errors import InputError

    with pytest.raises(InputError, match="empty"):
        encoder.encode_token_ids([[]])
    with pytest.raises(InputError, match="at most 256"):
        encoder.encode_token_ids([[101] * 300])
    with pytest.raises(InputError, match="token id"):
        encoder.encode_token_ids([[101, 10**9, 102]])


def test_truncation_is_logged(encoder, caplog):
    with caplog.at_level("INFO", logger="minilm_npu.tokenization"):
        encoder.encode(texts.LONG + texts.SHORT)
    assert "1 of 5 input(s) were longer than 256 tokens" in caplog.text
