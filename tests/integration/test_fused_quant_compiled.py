"""The int8 engine's fused activation quantization, compiled by Inductor: the same codes as the eager ops."""

from __future__ import annotations

import pytest
import torch

from minilm_npu.engine.cpu_linears import FusedQuantizer, quantize_per_token


@pytest.mark.isa
@pytest.mark.parametrize("width", [384, 1536])
def test_fused_codes_equal_the_eager_ones(width):
    torch.manual_seed(width)
    x = torch.randn(100, width) * torch.rand(width) * 8  # outlier-ish channels, as BERT's activations have
    inv_smooth = torch.rand(width) + 0.5
    quantizer = FusedQuantizer(min_rows=64)
    if not quantizer.enabled:
        pytest.skip("MINILM_NPU_FUSED_QUANT=0 in this environment")
    with torch.inference_mode():
        codes, scale = quantizer(x, inv_smooth)
        eager_codes, eager_scale = quantize_per_token(x, inv_smooth)
    if not quantizer.enabled:
        pytest.skip("Inductor could not compile here (fell back to the eager ops, as designed)")
    assert codes.dtype == torch.uint8 and codes.shape == x.shape and scale.shape == (100, 1)
    torch.testing.assert_close(scale, eager_scale, rtol=1e-6, atol=0)
    assert (codes.int() - eager_codes.int()).abs().max() <= 1  # at most a rounding tie apart
    assert (codes != eager_codes).float().mean() < 1e-3
