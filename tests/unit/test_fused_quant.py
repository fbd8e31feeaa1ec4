"""The int8 engine's fused activation quantization: eager for small inputs, and a clean fallback where Inductor
cannot compile (the compiled kernel's codes against the eager ones: tests/integration/test_fused_quant_compiled.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from minilm_npu.engine import packed
from minilm_npu.engine.cpu_linears import FusedQuantizer, quantize_per_token


def test_small_inputs_stay_eager_and_never_compile(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled for a small input"))
    quantizer = FusedQuantizer(min_rows=64)
    x, inv_smooth = torch.randn(9, 384), torch.rand(384) + 0.5
    codes, scale = quantizer(x, inv_smooth)
    assert torch.equal(codes, quantize_per_token(x, inv_smooth)[0])


def test_a_failed_compile_falls_back_to_the_eager_ops_with_one_warning(monkeypatch, caplog):
    def no_compiler(*_args, **_kwargs):
        def compiled(*_a):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

        return compiled

    monkeypatch.setattr(torch, "compile", no_compiler)
    quantizer = FusedQuantizer(min_rows=64)
    x, inv_smooth = torch.randn(80, 384), torch.rand(384) + 0.5
    with caplog.at_level(logging.WARNING, logger=packed.__name__):
        first = quantizer(x, inv_smooth)
        second = quantizer(x, inv_smooth)
    eager = quantize_per_token(x, inv_smooth)
    assert torch.equal(first[0], eager[0]) and torch.equal(second[0], eager[0]) and not quantizer.enabled
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "No working C++ compiler found" in warnings[0] and "more detail" not in warnings[0]


def test_the_environment_switch_keeps_every_batch_eager(monkeypatch):
    monkeypatch.setenv("MINILM_NPU_FUSED_QUANT", "0")
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled although switched off"))
    quantizer = FusedQuantizer(min_rows=64)
    assert not quantizer.enabled and not quantizer.compile()
    x, inv_smooth = torch.randn(80, 384), torch.rand(384) + 0.5
    assert torch.equal(quantizer(x, inv_smooth)[0], quantize_per_token(x, inv_smooth)[0])
