"""The packed engine on the device under test against sentence-transformers on that same device.

The device is ``MINILM_TEST_DEVICE`` (default ``cpu``; ``benchmarks/gpu_check.sh`` sets ``cuda:0``), so the same
exactness checks run on a CPU in CI and on a card when one is lent: float32 within 1e-5 with TF32 (and oneDNN's
bfloat16 matmuls) off, the static-shape forward (captured as a device graph where the device has graphs) exact too,
and float16/bfloat16 within the quality bounds.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from minilm_npu import MiniLMEncoder
from minilm_npu.devices import graph_api, parse_devices
from minilm_npu.engine.graphs import MAX_GRAPH_SLOTS, GraphedForwards
from minilm_npu.samples import MIXED_24
from minilm_npu.verify.accuracy import spearman
from tests import texts
from tests.conftest import TEST_DEVICE

DEVICE = parse_devices(TEST_DEVICE)[0]
BATCH = texts.ALL + MIXED_24
#: The values of the precision switches below that keep float32 matmuls in float32.
FULL_PRECISION = ("highest", False, "none", "ieee")


@pytest.fixture(scope="module")
def st_device(model_dir):
    """sentence-transformers in float32 on the device under test (transformers 5 keeps a checkpoint's stored
    dtype, and the GPU copy is stored in float16: upcast, which is exact)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device=str(DEVICE)).to(torch.float32)


@pytest.fixture(scope="module")
def reference(st_device):
    return st_device.encode(BATCH, batch_size=64)


@pytest.fixture(scope="module")
def engine32(model_dir):
    return MiniLMEncoder(model_path=str(model_dir), device=str(DEVICE))


def float32_precision_flags() -> dict[str, object]:
    """Every switch that lets torch compute a float32 matmul in less precision, as it stands now: the global one,
    CUDA's TF32, and (torch 2.9+) each backend's own, oneDNN's (the CPU's linear layers) among them."""
    try:
        precision: object = torch.get_float32_matmul_precision()
    except RuntimeError as err:  # torch 2.9+ refuses to answer once a per-backend switch was set beside it
        precision = f"unreadable ({str(err).splitlines()[0][:80]})"
    flags: dict[str, object] = {
        "torch.get_float32_matmul_precision()": precision,
        "torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    for name in ("cuda.matmul", "mkldnn", "mkldnn.matmul"):
        switches: object = torch.backends
        for part in name.split("."):
            switches = getattr(switches, part, None)
        value = getattr(switches, "fp32_precision", None)
        if value is not None:
            flags[f"torch.backends.{name}.fp32_precision"] = value
    return flags


def test_float32_matmuls_stay_full_precision(engine32):
    """float32 is exact only with full-precision matmuls: loading and running the engine must not let the device
    under test cut them (TF32 on CUDA; bfloat16 inside oneDNN's float32 matmuls on a CPU)."""
    engine32.encode(["hello"])
    engine32.encode(BATCH[:8], batch_size=4)
    lowered = {name: value for name, value in float32_precision_flags().items() if value not in FULL_PRECISION}
    assert not lowered, f"float32 matmuls may now run in less precision: {lowered}"


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_float32_equals_sentence_transformers(batch_size, engine32, reference):
    np.testing.assert_allclose(engine32.encode(BATCH, batch_size=batch_size), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("square_mask", [False, True])
def test_static_shape_forward_is_exact(square_mask, engine32, reference, monkeypatch):
    """Every gear this batch pads to, run as the device graphs run it (captured and replayed where the device has a
    graph API, eagerly on the CPU), with broadcast and with full square masks (what Ascend gets)."""
    backend = engine32.workers[0].backend
    monkeypatch.setitem(MAX_GRAPH_SLOTS, "float32", 1 << 16)
    graphs = GraphedForwards(backend.model, "float32", backend.head, graph_api(DEVICE), square_mask=square_mask)
    ids = engine32.tokenize(BATCH)
    for size in (1, 8, len(ids)):
        for start in range(0, len(ids), size if size > 1 else 6):  # batch 1: every length class, not every text
            pooled = graphs.embed(ids[start : start + size])
            assert pooled is not None and not graphs.failed
            ours = torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()
            np.testing.assert_allclose(ours, reference[start : start + size], atol=1e-5, rtol=0)


@pytest.mark.skipif(graph_api(DEVICE) is None, reason="the device under test has no graph API")
def test_small_batches_replay_graphs(engine32):
    backend = engine32.workers[0].backend
    engine32.encode(["one query"])
    assert backend.graphs is not None and not backend.graphs.failed and backend.graphs._runners


@pytest.fixture(scope="module")
def stsb(stsb_path):
    with open(stsb_path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], np.array([float(r["score"]) for r in rows])


def sts_spearman(encoder, stsb) -> float:
    first, second, gold = stsb
    a, b = encoder.encode(first, batch_size=128), encoder.encode(second, batch_size=128)
    return spearman((a * b).sum(axis=1), gold)


@pytest.mark.skipif(DEVICE.type == "cpu", reason="reduced precision on the CPU is covered by test_packed.py")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_quality(dtype, model_dir, engine32, reference, stsb):
    encoder = MiniLMEncoder(model_path=str(model_dir), device=str(DEVICE), dtype=dtype)
    ours = encoder.encode(BATCH)
    assert (ours * reference).sum(axis=1).min() >= 0.999
    assert sts_spearman(engine32, stsb) - sts_spearman(encoder, stsb) <= 0.001


def test_sentence_transformers_surface_on_device(engine32, st_device):
    """The drop-in surface (issue 15) on the device under test: tensors stay on it, values match ST's there."""
    batch = BATCH[:8]
    ours, theirs = (model.encode(batch, convert_to_tensor=True) for model in (engine32, st_device))
    assert ours.device == theirs.device and ours.dtype == theirs.dtype and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    for ours, theirs in zip(*(model.encode(batch, output_value="token_embeddings") for model in (engine32, st_device))):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours.float().cpu(), theirs.float().cpu(), atol=1e-4, rtol=0)
    # Quantized end to end, a value within float rounding of a bucket edge may land one bucket over.
    ours, theirs = (model.encode(batch, precision="int8") for model in (engine32, st_device))
    assert ours.dtype == theirs.dtype == np.int8
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
