"""Model resolution: bundled copy with sha256 check, local directories, hub ids, and clear errors."""

from __future__ import annotations

import shutil

import pytest

from minilm_npu import modelfiles
from minilm_npu.modelfiles import ModelFilesError, read_model_dir, resolve_model


def test_bundled_default_reads_settings_from_its_files():
    files = resolve_model(None)
    assert files.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert files.max_seq_length == 256  # sentence_bert_config.json, not tokenizer.json's 128
    assert files.pooling == "mean" and files.normalize and files.hidden_size == 384
    assert files.weights_path.name == "model.safetensors"


def test_local_directory(model_dir):
    files = resolve_model(str(model_dir))
    assert files.directory == model_dir.resolve() and files.max_seq_length == 256


def test_missing_files_are_all_listed(model_dir, tmp_path):
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelFilesError, match="missing tokenizer.json, model.safetensors"):
        read_model_dir(tmp_path)


def test_pickled_weights_are_refused(model_dir, tmp_path):
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelFilesError, match="never loaded"):
        read_model_dir(tmp_path)


def test_missing_directory():
    with pytest.raises(ModelFilesError, match="does not exist.*modelscope download"):
        resolve_model("./no/such/dir")


def test_uncached_hub_id_says_how_to_get_the_files(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelFilesError, match="not in the Hugging Face cache.*modelscope download"):
        resolve_model("someone/not-a-cached-model")


def test_sha256_mismatch_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILM_NPU_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"corrupted")
    with pytest.raises(ModelFilesError, match="not the official"):
        modelfiles.verify_sha256(fake)


def test_good_sha256_verdict_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILM_NPU_CACHE", str(tmp_path / "cache"))
    good = tmp_path / "weights"
    good.write_bytes(b"abc")
    expected = modelfiles.sha256_of(good)
    modelfiles.verify_sha256(good, expected)
    calls = []
    monkeypatch.setattr(modelfiles, "sha256_of", lambda path: calls.append(path) or "x")
    modelfiles.verify_sha256(good, expected)  # served from the cached verdict
    assert calls == []
    good.write_bytes(b"abcd")  # changed file: checked again, and now it fails
    with pytest.raises(ModelFilesError):
        modelfiles.verify_sha256(good, expected)


def test_cls_pooling_and_unknown_pooling(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    config = copy / "1_Pooling" / "config.json"
    config.write_text('{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}')
    assert read_model_dir(copy).pooling == "cls"
    config.write_text('{"pooling_mode": "median"}')
    with pytest.raises(ModelFilesError, match="pooling mode 'median' is not one of"):
        read_model_dir(copy)


@pytest.mark.parametrize(
    "text,expected",
    [("sentence-transformers/all-MiniLM-L6-v2", True), ("./a/b", False), ("a/b/c", False), ("name", False)],
)
def test_hub_id_shape(text, expected):
    assert modelfiles.looks_like_hub_id(text) is expected


def test_cached_hub_id_resolves_offline(model_dir, tmp_path, monkeypatch):
    """A hub id found in huggingface_hub's cache (the layout `snapshot_download` leaves) works with no network."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "0123abc"
    shutil.copytree(model_dir, snapshot)
    (cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "refs").mkdir()
    (cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    files = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert files.directory == snapshot.resolve()
    assert files.name == "sentence-transformers/all-MiniLM-L6-v2" and files.max_seq_length == 256
