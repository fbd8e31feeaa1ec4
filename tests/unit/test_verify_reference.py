"""Which reference the accuracy protocol picks (``--reference``, the bundled model or a copy of it, another model),
and the clear error when sentence-transformers is missing."""

from __future__ import annotations

import sys

import pytest

from minilm_npu.errors import InputError
from minilm_npu.modelfiles import bundled_model_dir
from minilm_npu.verify.reference import SentenceTransformersReference, reference_kind
from minilm_npu.verify.settings import AccuracySettings, Target


def kind(model_path, reference=None) -> str:
    return reference_kind(AccuracySettings(target=Target(model_path=model_path), reference=reference))


def test_bundled_model_keeps_the_transformers_reference():
    assert kind(None) == "transformers"
    assert kind(str(bundled_model_dir())) == "transformers"
    assert kind(None, reference="sentence-transformers") == "sentence-transformers"


def test_a_copy_of_the_bundled_model_is_checked_against_the_official_files(tmp_path):
    """Same config.json and tokenizer.json, other weights: still the bundled model, so damage shows as FAIL."""
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((bundled_model_dir() / name).read_bytes())
    assert kind(str(tmp_path)) == "transformers"
    (tmp_path / "config.json").write_text("{}")
    assert kind(str(tmp_path)) == "sentence-transformers"


def test_another_model_gets_sentence_transformers(tmp_path):
    assert kind(str(tmp_path)) == "sentence-transformers"
    assert kind("owner/not-a-local-dir") == "sentence-transformers"
    assert kind(str(tmp_path), reference="transformers") == "transformers"


def test_unknown_reference_is_bad_input():
    with pytest.raises(InputError, match="--reference takes sentence-transformers, transformers, not 'onnx'"):
        AccuracySettings(reference="onnx")


def test_missing_sentence_transformers_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now raises ImportError
    with pytest.raises(InputError, match="pip install sentence-transformers"):
        SentenceTransformersReference(tmp_path)
