"""Tokenization at 256 (not tokenizer.json's 128), unpadded; the id check at the edges (the comparison with
sentence-transformers' tokenizer is in tests/integration/test_tokenization_reference.py)."""

from __future__ import annotations

import pytest

from minilm_npu.modelfiles import resolve_model
from minilm_npu.tokenization import Tokenizer
from tests import texts


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(resolve_model(None))


def test_truncates_at_256_not_128(tokenizer):
    ids = tokenizer.encode(texts.LONG + texts.MEDIUM)
    assert len(ids[0]) == 256 and ids[0][-1] == 102
    assert 128 < len(ids[1]) <= 256


def test_no_padding_and_empty_text(tokenizer):
    assert tokenizer.encode(["", "hi"]) == [[101, 102], [101, 7632, 102]]
    assert tokenizer.encode([]) == []


def test_untruncated_ids_keep_every_token(tokenizer):
    (full,) = tokenizer.encode(texts.LONG, truncate=False)
    (cut,) = tokenizer.encode(texts.LONG)
    assert len(full) > 256 and len(cut) == 256
    assert cut[:255] == full[:255] and cut[-1] == full[-1] == 102


@pytest.mark.parametrize(
    "ids,message",
    [
        ([[]], r"token_ids\[0\] is an empty list"),
        ([[101, 102], [101] * 257], r"token_ids\[1\] has 257 token ids; the model takes at most 256"),
        ([[101, 30522]], r"not a token id in \[0, 30522\)"),
        ([[101, -1]], "not a token id"),
        ([[101, 1.0]], "not a token id"),
        ([[101, True]], "not a token id"),
        (["101"], "str, not a list of token ids"),
    ],
)
def test_check_token_ids_refuses_what_the_model_cannot_take(ids, message):
    from minilm_npu.tokenization import TokenIdError, check_token_ids

    with pytest.raises(TokenIdError, match=message):
        check_token_ids(ids, 30522, 256)


def test_check_token_ids_passes_valid_ids_as_ints():
    import numpy as np

    from minilm_npu.tokenization import check_token_ids

    assert check_token_ids([np.array([101, 7, 102]), (101, 102)], 30522, 256) == [[101, 7, 102], [101, 102]]


def test_decode_tokens(tokenizer):
    assert tokenizer.decode_tokens(tokenizer.encode(["Hello world"])[0]) == ["[CLS]", "hello", "world", "[SEP]"]


def test_invalid_unicode_is_an_input_error_naming_the_index(tokenizer):
    from minilm_npu.tokenization import UntokenizableText

    for truncate in (True, False):
        with pytest.raises(
            UntokenizableText,
            match=r"^sentences\[1\] is not valid Unicode: surrogates not allowed "
            r"\('\\ud800' at character 4\)",
        ) as info:
            tokenizer.encode(["ok", "bad \ud800", "fine"], truncate=truncate)
        assert info.value.index == 1


def test_any_text_the_tokenizer_refuses_is_named():
    from minilm_npu.tokenization import UntokenizableText, _encode_batch

    class Picky:
        def encode_batch(self, texts):
            raise Exception("cannot take it")  # noqa: TRY002 - as untyped as the real tokenizer's errors

        def encode(self, text):
            if text == "odd":
                raise Exception("cannot take it")  # noqa: TRY002
            return text

    with pytest.raises(UntokenizableText, match=r"sentences\[2\] cannot be tokenized \(Exception: cannot take it\)"):
        _encode_batch(Picky(), ["a", "b", "odd"])
