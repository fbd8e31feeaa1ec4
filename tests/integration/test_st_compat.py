"""The same calls on ``SentenceTransformer`` and on ``MiniLMEncoder`` give the same types, shapes, dtypes and values.

float32 results agree within 1e-5. Quantized results equal sentence-transformers' ``quantize_embeddings`` applied
to the float32 output the same call quantized, bit for bit; against sentence-transformers' own quantized output
(from floats that differ by ~1e-7) an int8 bucket may move by one and a binary bit may flip only where the float is
within 1e-5 of zero.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from minilm_npu.errors import InputError
from tests import texts

ATOL = 1e-5
# Short on purpose (a padded sentence-transformers batch costs its longest text); the long, truncated one is
# exercised by the "*_long" calls only.
TEXTS = texts.SHORT + texts.FRENCH + texts.EMPTYISH[:1]
QUANTIZED = ("int8", "uint8", "binary", "ubinary")


@pytest.fixture(scope="module")
def st_quantize():
    from sentence_transformers.util.quantization import quantize_embeddings

    return quantize_embeddings


def assert_same(ours, theirs, atol=ATOL, path="result"):
    """Same container types, shapes, dtypes, devices; values within ``atol`` (0 means equal)."""
    assert type(ours) is type(theirs), f"{path}: {type(ours).__name__} != {type(theirs).__name__}"
    if isinstance(theirs, list):
        assert len(ours) == len(theirs), path
        for index, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, atol, f"{path}[{index}]")
        return
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (
        f"{path}: {ours.shape}/{ours.dtype} != {theirs.shape}/{theirs.dtype}"
    )
    if isinstance(theirs, torch.Tensor):
        assert ours.device == theirs.device, path
        ours, theirs = ours.numpy(), theirs.numpy()
    if atol:  # in float64: differences of int8 values would wrap around in int8
        np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64), atol=atol, rtol=0, err_msg=path)
    else:
        np.testing.assert_array_equal(ours, theirs, err_msg=path)


FLOAT_CALLS = {
    "default": {},
    "convert_to_numpy": {"convert_to_numpy": True},
    "convert_to_tensor": {"convert_to_tensor": True},
    "tensor_wins_over_numpy": {"convert_to_tensor": True, "convert_to_numpy": True},
    "list_of_tensors": {"convert_to_numpy": False},
    "normalize_and_batch_size": {"normalize_embeddings": True, "batch_size": 3},
    "progress_bar": {"show_progress_bar": True},
    "prompt": {"prompt": "query: "},
    "prompt_name_query": {"prompt_name": "query"},
    "prompt_name_document": {"prompt_name": "document"},
    "device": {"device": "cpu", "convert_to_tensor": True},
    "token_embeddings": {"output_value": "token_embeddings"},
    "token_embeddings_ignore_tensor_flag": {"output_value": "token_embeddings", "convert_to_tensor": True},
}
LONG_CALLS = {"default_long": {}, "token_embeddings_long": {"output_value": "token_embeddings"}}


SINGLE = ("default", "convert_to_tensor", "list_of_tensors", "prompt", "token_embeddings", "token_embeddings_long")
CASES = [(name, False) for name in [*FLOAT_CALLS, *LONG_CALLS]] + [(name, True) for name in SINGLE]


@pytest.mark.parametrize("name, single", CASES, ids=[f"{n}-{'single' if s else 'batch'}" for n, s in CASES])
def test_float_calls_match(encoder, st_model, name, single):
    kwargs = FLOAT_CALLS.get(name, LONG_CALLS.get(name))
    sentences = texts.MEDIUM + texts.LONG + TEXTS[:2] if name in LONG_CALLS else TEXTS
    sentences = sentences[1] if single else sentences
    assert_same(encoder.encode(sentences, **kwargs), st_model.encode(sentences, **kwargs))


OUTPUTS = {
    "numpy": {},
    "tensor": {"convert_to_tensor": True},
    "list": {"convert_to_numpy": False},
    "tokens": {"output_value": "token_embeddings"},
}
QUANTIZED_CASES = [(p, o) for p in QUANTIZED for o in ("numpy", "tokens")] + [
    (p, o) for p in ("int8", "ubinary") for o in ("tensor", "list")
]


@pytest.fixture(scope="module")
def float_outputs(encoder, st_model):
    """Each output kind's float32 result, ours and sentence-transformers', computed once."""
    return {kind: (encoder.encode(TEXTS, **kw), st_model.encode(TEXTS, **kw)) for kind, kw in OUTPUTS.items()}


def _flat(result) -> np.ndarray:
    return np.concatenate([np.asarray(x) for x in result])


@pytest.mark.parametrize("precision, kind", QUANTIZED_CASES, ids=[f"{p}-{o}" for p, o in QUANTIZED_CASES])
def test_quantized_calls_match(encoder, st_model, st_quantize, float_outputs, precision, kind, monkeypatch):
    from minilm_npu import st_compat

    output = OUTPUTS[kind]
    # The float32 output this very call quantized: a second call may run on another thread count (AdaptiveThreads)
    # and move the last bits (~6e-8), which can move an int8 bucket at its edge.
    quantized_inputs = []
    quantize = st_compat.quantize_embeddings
    monkeypatch.setattr(
        st_compat,
        "quantize_embeddings",
        lambda embeddings, *a, **kw: quantized_inputs.append(embeddings) or quantize(embeddings, *a, **kw),
    )
    ours = encoder.encode(TEXTS, precision=precision, **output)
    monkeypatch.undo()
    theirs = st_model.encode(TEXTS, precision=precision, **output)
    # Exact: sentence-transformers' quantize_embeddings of our own float32 output, in the container it returns.
    floats, st_floats = quantized_inputs[0], float_outputs[kind][1]
    expected = st_quantize(floats if isinstance(floats, list) else np.asarray(floats), precision)
    if kind in ("tensor", "list"):
        expected = torch.as_tensor(expected) if kind == "tensor" else list(torch.as_tensor(expected))
    assert_same(ours, expected, atol=0)
    # Against sentence-transformers' own end-to-end output: same types, and values as close as float noise allows.
    assert_same(ours, theirs, atol=1 if precision.endswith("int8") else 255)
    if precision.endswith("binary"):
        flip = np.unpackbits(_flat(ours).view(np.uint8), axis=-1) != np.unpackbits(
            _flat(theirs).view(np.uint8), axis=-1
        )
        assert np.all(np.abs(_flat(st_floats).reshape(flip.shape)[flip]) < ATOL)


def test_single_text_int8_is_refused_like_sentence_transformers(encoder, st_model):
    with pytest.raises(ValueError, match="single embedding"):
        st_model.encode("hello", precision="int8")
    with pytest.raises(InputError, match="single embedding"):
        encoder.encode("hello", precision="int8")
    assert_same(encoder.encode("hello", precision="ubinary"), st_model.encode("hello", precision="ubinary"), atol=0)


@pytest.mark.parametrize("method", ["encode_query", "encode_document"])
def test_query_and_document(encoder, st_model, method):
    assert_same(getattr(encoder, method)(TEXTS[:4]), getattr(st_model, method)(TEXTS[:4]))
    assert_same(
        getattr(encoder, method)("hi", convert_to_tensor=True), getattr(st_model, method)("hi", convert_to_tensor=True)
    )


def test_similarity(encoder, st_model):
    a, b = encoder.encode(TEXTS[:3]), encoder.encode(TEXTS[3:])
    for x, y in [(a, b), (torch.from_numpy(a), torch.from_numpy(b)), (a[0], b), (list(a), list(b))]:
        assert_same(encoder.similarity(x, y), st_model.similarity(x, y), atol=1e-6)
    assert_same(encoder.similarity_pairwise(a, b[:3]), st_model.similarity_pairwise(a, b[:3]), atol=1e-6)
    assert_same(encoder.similarity_pairwise(a[0], b[0]), st_model.similarity_pairwise(a[0], b[0]), atol=1e-6)
    assert encoder.similarity_fn_name == st_model.similarity_fn_name == "cosine"


def test_dimension_and_max_seq_length(encoder, st_model):
    assert encoder.get_embedding_dimension() == st_model.get_embedding_dimension() == 384
    assert encoder.get_sentence_embedding_dimension() == 384
    assert encoder.max_seq_length == st_model.max_seq_length == 256
    try:
        encoder.max_seq_length = st_model.max_seq_length = 16
        assert_same(encoder.encode(texts.MEDIUM + texts.SHORT), st_model.encode(texts.MEDIUM + texts.SHORT))
        assert_same(
            encoder.encode(texts.MEDIUM, output_value="token_embeddings"),
            st_model.encode(texts.MEDIUM, output_value="token_embeddings"),
        )
        assert len(encoder.tokenize(texts.MEDIUM)[0]) == 16
    finally:
        encoder.max_seq_length = st_model.max_seq_length = 256
    for bad in (257, 1, "64", 2.5):
        with pytest.raises(InputError, match="max_seq_length"):
            encoder.max_seq_length = bad
    assert encoder.max_seq_length == 256


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"foo": 1}, "unexpected keyword argument 'foo'"),
        ({"truncate_dim": 128}, "'truncate_dim'"),
        ({"pool": {}}, "'pool'"),
        ({"prompt_name": "passage"}, "prompt name 'passage'"),
        ({"precision": "int4"}, "precision 'int4'"),
        ({"output_value": None}, "output_value None"),
        ({"output_value": "attention_mask"}, "output_value 'attention_mask'"),
        ({"device": ["cpu", "cpu"]}, "device lists"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_unsupported_arguments_are_named(encoder, kwargs, message):
    with pytest.raises(InputError, match=message):
        encoder.encode(TEXTS[:2], **kwargs)


def test_prompt_name_ignored_for_prompt_with_a_warning(encoder, st_model, caplog):
    with caplog.at_level(logging.WARNING, logger="minilm_npu"):
        ours = encoder.encode(TEXTS[:2], prompt="query: ", prompt_name="nope")
    assert "ignored" in caplog.text
    assert_same(ours, st_model.encode(TEXTS[:2], prompt="query: ", prompt_name="nope"))


def test_normalize_false_keeps_the_encoders_meaning(encoder, st_model):
    # Documented difference: here False skips the model's Normalize module (raw pooled vectors, what the server
    # uses); sentence-transformers runs that module regardless. Directions agree.
    ours = encoder.encode(TEXTS, normalize_embeddings=False, convert_to_numpy=True)
    theirs = st_model.encode(TEXTS, normalize_embeddings=False, convert_to_numpy=True)
    np.testing.assert_allclose(ours / np.linalg.norm(ours, axis=1, keepdims=True), theirs, atol=ATOL, rtol=0)
