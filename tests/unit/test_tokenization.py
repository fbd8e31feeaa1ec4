"""Tokenization at 256 (not tokenizer.json's 128), unpadded, identical to the reference tokenizer."""

from __future__ import annotations

import pytest

from minilm_npu.modelfiles import resolve_model
from minilm_npu.tokenization import Tokenizer
from tests import texts


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(resolve_model(None))


def test_same_ids_as_sentence_transformers(tokenizer, st_model):
    for text in texts.ALL:
        features = st_model.tokenize([text])
        assert tokenizer.encode([text])[0] == features["input_ids"][0].tolist(), repr(text)


def test_truncates_at_256_not_128(tokenizer):
    ids = tokenizer.encode(texts.LONG + texts.MEDIUM)
    assert len(ids[0]) == 256 and ids[0][-1] == 102
    assert 128 < len(ids[1]) <= 256


def test_no_padding_and_empty_text(tokenizer):
    assert tokenizer.encode(["", "hi"]) == [[101, 102], [101, 7632, 102]]
    assert tokenizer.encode([]) == []


def test_untruncated_counts(tokenizer):
    assert tokenizer.count_tokens(texts.LONG)[0] > 256
    assert tokenizer.truncated_total >= 0


def test_decode_tokens(tokenizer):
    assert tokenizer.decode_tokens(tokenizer.encode(["Hello world"])[0]) == ["[CLS]", "hello", "world", "[SEP]"]
