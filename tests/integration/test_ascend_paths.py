"""The Ascend code paths, proven on the CPU: everything but torch_npu's kernels themselves.

A stand-in ``torch_npu`` module (the ``fake_torch_npu`` fixture, tests/fixtures/npu.py) provides reference
implementations of the two kernels the engine calls on an NPU: ``npu_fusion_attention`` with ``input_layout="TND"``
(per-sequence SDPA over the cumulative lengths, the kernel's documented semantics) and ``npu_gelu`` (exact erf GELU).
With it, the engine's NPU choices run end to end on the real model and are compared with sentence-transformers; only
the kernels are unverified here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minilm_npu import devices
from minilm_npu.engine import policy
from minilm_npu.engine.bert import BertConfig, PackedBert, load_weights, pack
from minilm_npu.engine.head import SentenceHead
from minilm_npu.modelfiles import resolve_model
from minilm_npu.samples import MIXED_24
from minilm_npu.tokenization import Tokenizer
from tests import texts

BATCH = texts.ALL + MIXED_24


@pytest.fixture(scope="module")
def real():
    files = resolve_model(None)
    config = BertConfig.from_dict(files.config)
    return config, load_weights(files.weights_path, config), Tokenizer(files).encode(BATCH)


def test_attention_plan_per_device(fake_torch_npu, monkeypatch):
    assert policy.attention_plan("cpu", "float32").strategy == "bucketed"
    cuda = policy.attention_plan("cuda", "float16")
    assert cuda.strategy == "padded" and not cuda.square_mask
    npu16 = policy.attention_plan("npu", "float16")
    assert npu16.strategy == "varlen" and not npu16.square_mask
    npu32 = policy.attention_plan("npu", "float32")
    assert npu32.strategy == "padded" and npu32.square_mask and "float32" in npu32.reason
    monkeypatch.delattr(fake_torch_npu, "npu_fusion_attention")
    older = policy.attention_plan("npu", "bfloat16")
    assert older.strategy == "padded" and older.square_mask


def test_exact_gelu_choice(fake_torch_npu, monkeypatch):
    gelu, why = devices.exact_gelu("npu")
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(gelu(x), F.gelu(x), atol=1e-6, rtol=0)
    assert fake_torch_npu.gelu_calls == ["none"] and "npu_gelu" in why
    assert devices.exact_gelu("cuda")[0] is F.gelu
    monkeypatch.delattr(fake_torch_npu, "npu_gelu")
    assert "tanh" in devices.exact_gelu("npu")[1]


def test_npu_float16_path_is_exact_and_never_calls_f_gelu(fake_torch_npu, real, st_model, monkeypatch):
    """The NPU's choices (TND varlen attention, npu_gelu) on the real model, in float32 arithmetic on the CPU.

    F.gelu is replaced before the model is built, so neither a call at run time nor a default taken at build time
    can reach the real one; and npu_gelu runs exactly once per layer and forward.
    """
    config, weights, ids = real
    plan = policy.attention_plan("npu", "float16")

    def forbidden(*args, **kwargs):
        raise AssertionError("an Ascend path called F.gelu, which runs the tanh approximation on an NPU")

    monkeypatch.setattr(torch.nn.functional, "gelu", forbidden)
    gelu, _ = devices.exact_gelu("npu")
    model = PackedBert(config, weights, torch.device("cpu"), gelu=gelu, varlen=devices.varlen_attention("npu"))
    packed = pack(ids, plan.strategy, model.device)
    with torch.inference_mode():
        pooled = SentenceHead.pool(model.forward(packed), packed.rows, "mean")
    monkeypatch.undo()
    assert fake_torch_npu.gelu_calls == ["none"] * config.num_layers  # the exact kernel, in every layer
    ours = F.normalize(pooled, dim=1).numpy()
    np.testing.assert_allclose(ours, st_model.encode(BATCH), atol=1e-5, rtol=0)


def test_square_mask_equals_broadcast_mask(real):
    config, weights, ids = real
    model = PackedBert(config, weights, torch.device("cpu"))
    with torch.inference_mode():
        outputs = []
        for square in (False, True):
            packed = pack(ids, "padded", model.device, square_mask=square)
            outputs.append(SentenceHead.pool(model.forward(packed), packed.rows, "mean"))
    assert packed.buckets[0].mask.shape[-2:] == (packed.buckets[0].mask.shape[-1],) * 2
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-6, rtol=0)
