"""The one-sentence path's choice per dtype and CPU, and its on-disk cache of built graphs (no model, no runtime)."""

from __future__ import annotations

import logging
import os

import pytest

from minilm_npu.engine.checkpoint import BertConfig
from minilm_npu.engine.query import GRAPH_VERSION, cached_graph, config_tag, plan_query, weights_digest
from minilm_npu.modelfiles import sha256_of

BOTH = ("onnxruntime", "openvino")


@pytest.mark.parametrize(
    ("dtype", "native_bfloat16", "installed", "setting", "runtime", "precision"),
    [
        ("float32", False, BOTH, None, "onnxruntime", "float32"),
        ("float32", True, ("openvino",), "auto", "openvino", "float32"),
        ("float32", False, (), None, None, "float32"),
        ("float32", False, BOTH, "openvino", "openvino", "float32"),
        ("float32", False, ("onnxruntime",), "openvino", None, "float32"),
        ("float32", False, BOTH, "off", None, "float32"),
        ("float32", False, BOTH, "0", None, "float32"),
        ("bfloat16", True, BOTH, None, "openvino", "bfloat16"),
        ("bfloat16", False, BOTH, None, None, "float32"),  # emulated bfloat16: nothing to gain
        ("bfloat16", True, ("onnxruntime",), None, None, "float32"),
        ("int8", True, BOTH, None, "onnxruntime", "float32"),  # one sentence: the exact graph beats int8 kernels
        ("int8", False, (), None, None, "float32"),
        ("int8", False, BOTH, "off", None, "float32"),
        ("float32", False, BOTH, "tensorrt", None, "float32"),
    ],
)
def test_plan_per_dtype_cpu_and_setting(dtype, native_bfloat16, installed, setting, runtime, precision):
    plan = plan_query(dtype, native_bfloat16, installed, setting)
    assert (plan.runtime, plan.precision) == (runtime, precision)
    assert plan.reason  # every choice says why, for `minilm-npu check`


def test_plan_reasons_name_the_cause():
    assert "not installed" in plan_query("float32", False, ()).reason
    assert "bfloat16 hardware" in plan_query("bfloat16", False, BOTH).reason
    assert "MINILM_NPU_QUERY_ENGINE" in plan_query("float32", False, BOTH, "off").reason
    assert "ignored" in plan_query("float32", False, BOTH, "tensorrt").reason


def test_graphs_are_cached_per_weights_digest_and_built_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MINILM_NPU_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights one")
    builds = []

    def build() -> bytes:
        builds.append(1)
        return b"graph"

    with caplog.at_level(logging.INFO, logger="minilm_npu.engine.query"):
        path = cached_graph(weights, "float32", build)
    assert path.read_bytes() == b"graph" and len(builds) == 1
    assert "building the one-sentence float32 graph" in caplog.text  # never built silently
    assert path.name.startswith(sha256_of(weights)[:32]) and f"-v{GRAPH_VERSION}-float32" in path.name
    assert path.parent == tmp_path / "cache" / "query"
    assert not list(path.parent.glob("*.partial"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="minilm_npu.engine.query"):
        assert cached_graph(weights, "float32", build) == path
    assert len(builds) == 1 and not caplog.text  # read back, not rebuilt
    assert cached_graph(weights, "int8", build) != path and len(builds) == 2  # another variant: its own file
    # New weights (another digest) get their own graph; the digest is not fooled by a remembered one.
    weights.write_bytes(b"weights two")
    os.utime(weights, ns=(1, 1))
    assert weights_digest(weights) == sha256_of(weights)
    assert cached_graph(weights, "float32", build) != path and len(builds) == 3


def test_a_read_only_cache_still_gives_the_digest(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("MINILM_NPU_CACHE", str(blocked))  # every write under it fails
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    assert weights_digest(weights) == sha256_of(weights)


def test_a_damaged_remembered_digest_is_hashed_again(tmp_path, monkeypatch):
    """A torn or foreign digest marker must never name another model's graph: only a whole sha256 is trusted."""
    monkeypatch.setenv("MINILM_NPU_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    assert weights_digest(weights) == sha256_of(weights)
    (marker,) = (tmp_path / "cache" / "digests").iterdir()
    for damaged in ("", sha256_of(weights)[:20], "z" * 64):
        marker.write_text(damaged)
        assert weights_digest(weights) == sha256_of(weights)
        assert marker.read_text() == sha256_of(weights)  # and remembered whole again
    assert not list(marker.parent.glob("*.partial"))


def test_the_config_is_part_of_the_graph_name():
    numbers = dict(
        vocab_size=10,
        hidden_size=8,
        num_layers=1,
        num_heads=2,
        intermediate_size=16,
        layer_norm_eps=1e-12,
        max_position_embeddings=16,
        type_vocab_size=2,
    )
    base = BertConfig(**numbers)
    assert config_tag(base) == config_tag(BertConfig(**numbers))
    assert config_tag(base) != config_tag(BertConfig(**{**numbers, "num_heads": 4}))
    assert config_tag(base) != config_tag(BertConfig(**{**numbers, "layer_norm_eps": 1e-7}))
