"""The tokenizer against sentence-transformers' own, and a text it cannot take through the real encoder."""

from __future__ import annotations

import numpy as np
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


def test_invalid_unicode_through_the_encoder_is_an_input_error_and_leaves_it_usable(encoder):
    from minilm_npu.errors import InputError

    with pytest.raises(InputError, match=r"sentences\[2\] is not valid Unicode"):
        encoder.encode(["ok", "fine", "a\udfffb"])
    with pytest.raises(InputError, match=r"sentences\[0\] is not valid Unicode"):
        encoder.encode("\ud800")
    np.testing.assert_allclose(encoder.encode(["ok"]), encoder.encode(["ok"]))  # the encoder is still usable
