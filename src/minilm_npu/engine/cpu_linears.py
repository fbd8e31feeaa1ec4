"""The CPU engine's linear layers: oneDNN float32/bfloat16 with weights reordered once, and the int8 layers with
SmoothQuant factors and per-token activation quantization (one Inductor-fused kernel for large inputs).

:func:`float_linear_factory` and :func:`int8_linear_factory` build them for :class:`minilm_npu.engine.bert.PackedBert`;
:class:`minilm_npu.engine.packed.PackedBackend` picks the factory from the device and dtype.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .bert import DenseLinear, LinearFactory, PackedBert
from .checkpoint import BertConfig
from .cpu_execution import use_threads
from .packing import pack
from .policy import cpu_has_native_bfloat16

log = logging.getLogger(__name__)


def quantize_per_token(x: torch.Tensor, inv_smooth: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x / smooth`` quantized per row: uint8 codes around 128 and the float32 ``[rows, 1]`` scales."""
    if inv_smooth is not None:
        x = x * inv_smooth
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
    return (x / scale).round().add(128).to(torch.uint8), scale


class FusedQuantizer:
    """:func:`quantize_per_token` as one Inductor-compiled kernel for large inputs, eager ops for small ones.

    Why: eagerly, per-token quantization is seven passes over the activations (scale, abs, max, divide, round,
    shift, cast); on a batch of short sentences they cost a large share of the int8 GEMM they feed. Inductor fuses
    them into one C++ loop nest with identical codes, several times faster. Below :attr:`min_rows` tokens the
    compiled call's fixed cost outweighs the passes it saves, so queries and small batches stay eager and never
    trigger a compile. Compiling needs a C++ compiler and takes seconds, once per
    process, on the first large batch or in :meth:`PackedBackend.warmup` (Inductor caches the code on disk for
    later processes). Where it fails, the eager ops are used, with one warning. ``MINILM_NPU_FUSED_QUANT=0`` keeps
    every batch eager.

    Args:
        min_rows: Inputs with at least this many rows take the compiled kernel.
    """

    def __init__(self, min_rows: int = 64):

        self.min_rows = min_rows
        self.enabled = os.environ.get("MINILM_NPU_FUSED_QUANT", "1") != "0"
        self._compiled = None
        self._lock = threading.Lock()

    def compile(self) -> bool:
        """Compile now, for both thread counts a forward may run on (Dynamo compiles per thread count: one, which
        :class:`~.cpu_execution.AdaptiveThreads` may pick and every CPU lane of :class:`~.cpu_execution.CpuExecution`
        runs on, and all) and both widths a BERT layer feeds, instead of inside the first large batch.

        Returns:
            Whether the compiled kernel is in use.
        """
        for count in sorted({1, torch.get_num_threads()}):
            with use_threads(count), torch.inference_mode():  # the mode the engine runs in (Dynamo guards on it)
                for width in (384, 1536):
                    self(torch.ones(self.min_rows, width), torch.ones(width))
        return self.enabled

    def _create(self) -> None:
        with self._lock:  # CPU lanes call this from two threads: one compiled function, not two
            if self._compiled is None:
                log.info(
                    "int8: compiling the fused activation quantization (once per process; Inductor caches it on disk)"
                )
                self._compiled = torch.compile(quantize_per_token, dynamic=True, fullgraph=True)

    def __call__(self, x: torch.Tensor, inv_smooth: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.enabled and inv_smooth is not None and x.shape[0] >= self.min_rows:
            if self._compiled is None:  # compiles on its first call
                self._create()
            try:
                return self._compiled(x, inv_smooth)
            except Exception as err:  # noqa: BLE001 - no C++ compiler, an unsupported build: the eager ops remain
                self.enabled = False
                log.warning(
                    "int8: fused activation quantization unavailable (%s: %s); using eager torch ops",
                    type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "",
                )
        return quantize_per_token(x, inv_smooth)


#: One per process: the compiled kernel is shared by every int8 engine.
FUSED_QUANTIZER = FusedQuantizer()


class Int8Linear:
    """int8 linear layer for x86 CPUs: int8 weights (per output channel), activations quantized per token.

    Why this route: ``torch.ao.quantization.quantize_dynamic`` and the quantized-tensor API it relies on
    (``torch.quantize_per_channel``, fbgemm's ``linear_prepack``) are deprecated, and ``torch._int_mm`` has no
    fast CPU kernel (far slower than the float32 GEMM); torchao's int8
    dynamic-activation config lowers to that same ``_int_mm`` on CPU. What stays maintained and fast is oneDNN's
    ``onednn::qlinear_prepack`` / ``qlinear_pointwise``, the kernels PyTorch 2's x86 quantization flow lowers to:
    plain uint8 tensors in, prepacked int8 weights, float32 out. Even on AVX2 without VNNI it runs faster than the
    float32 GEMM (u8 x s8 ``vpmaddubsw``), about as fast as fbgemm's dynamic linear.

    Accuracy: per-tensor activation scales (what ``quantize_dynamic`` did) give too low a cosine against float32
    on short texts, because BERT's activations have a few outlier channels. So (1) each token gets its own scale:
    the kernel runs with a unit input scale and a fixed zero point of 128, and the per-token scales are applied to
    its float32 output together with the bias (one ``addcmul``); (2) SmoothQuant: per input channel, a factor
    ``s = sqrt(max|x| / max|w|)`` (calibrated once at load) moves outliers from activations into the weights
    (``x / s`` and ``w * s`` give the same product).

    Args:
        weight: ``[out, in]`` float weight.
        bias: ``[out]`` float bias.
        gelu: Apply exact GELU after the bias.
        act_max: ``[in]`` calibrated max |activation| per input channel; None skips smoothing.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, gelu: bool = False, act_max: torch.Tensor | None = None
    ):
        weight = weight.float()
        self.inv_smooth = None
        if act_max is not None:
            smooth = act_max.float().clamp(min=1e-5).sqrt() / weight.abs().amax(dim=0).clamp(min=1e-5).sqrt()
            weight = weight * smooth
            self.inv_smooth = (1.0 / smooth).contiguous()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.packed = torch.ops.onednn.qlinear_prepack(quantized, None)
        self.w_scale = scale.contiguous()
        self.w_zero = torch.zeros(weight.shape[0], dtype=torch.int32)
        self.bias = bias.float().contiguous()
        self.gelu = gelu

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        quantized, scale = FUSED_QUANTIZER(x, self.inv_smooth)
        out = torch.ops.onednn.qlinear_pointwise(
            quantized, 1.0, 128, self.packed, self.w_scale, self.w_zero, None, 1.0, 0, torch.float32, "none", [], ""
        )
        out = torch.addcmul(self.bias, out, scale)
        return F.gelu(out) if self.gelu else out


class OneDnnLinear:
    """float32 linear layer for x86 CPUs, its weight reordered once into oneDNN's blocked layout.

    Why: ``F.linear`` calls MKL's sgemm, which packs the whole weight matrix again on every call. For the few
    tokens of an interactive request that packing is most of the work (a batch-1 forward is bound by streaming
    the 42 MB of float32 weights). oneDNN's ``mkldnn::_linear_pointwise`` on a pre-reordered weight (the kernel
    PyTorch's own Inductor emits for frozen CPU linears) skips it: lower batch-1 latency, the same throughput on
    large batches, outputs within float rounding of ``F.linear``. GELU stays a separate exact ``F.gelu``: oneDNN's
    fused erf-GELU post-op is slower.

    Args:
        weight: ``[out, in]`` float32 (or, on AVX512-BF16/AMX CPUs, bfloat16) weight.
        bias: ``[out]`` bias, cast to the weight's dtype.
        gelu: Apply exact GELU after the bias.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, gelu: bool = False):
        dtype = torch.bfloat16 if weight.dtype == torch.bfloat16 else torch.float32
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype).contiguous(), None)
        self.bias, self.gelu = bias.to(dtype).contiguous(), gelu

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.gelu(out) if self.gelu else out


class Bfloat16Linear:
    """A float32-in, float32-out linear layer computed in bfloat16 on CPUs with bfloat16 hardware.

    The int8 engine's QKV projection: it is the layer int8 hurts most (see :data:`INT8_ROLES`), and in float32 it
    is a large share of the int8 engine's GEMM time on a batch of short sentences. bfloat16 keeps float32's range
    (so no activation scales) with an 8-bit mantissa, and oneDNN runs it faster than float32 on AVX512-BF16/AMX.
    Attention itself stays float32.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, gelu: bool = False):
        self.linear = OneDnnLinear(weight.to(torch.bfloat16), bias, gelu)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.to(torch.bfloat16)).float()


def onednn_linear_supported() -> bool:
    """Whether this torch build has oneDNN's float32 linear with pre-reordered weights (x86 builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _ActivationMax:
    """Wraps a linear layer during calibration and records max |input| per channel."""

    def __init__(self, linear):
        self.linear, self.max = linear, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        current = x.abs().amax(dim=0)
        self.max = current if self.max is None else torch.maximum(self.max, current)
        return self.linear(x)


def float_linear_factory(
    device: torch.device, dtype: torch.dtype, activation: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> LinearFactory:
    """Linear layers of a float engine: :class:`OneDnnLinear` for float32 (and native bfloat16) on a CPU with
    oneDNN, else :class:`~minilm_npu.engine.bert.DenseLinear` with the device's exact GELU ``activation`` (accelerators,
    bfloat16/float16, CPU builds without oneDNN)."""
    # bfloat16 too where the CPU has bfloat16 hardware: oneDNN's bf16 kernel on a pre-reordered weight is faster
    # than F.linear's at a few tokens and as fast at hundreds.
    prepacked = {torch.float32} | ({torch.bfloat16} if cpu_has_native_bfloat16() else set())
    if device.type == "cpu" and dtype in prepacked and onednn_linear_supported():
        return lambda _n, _role, weight, bias, gelu: OneDnnLinear(weight, bias, gelu)
    return lambda _n, _role, weight, bias, gelu: DenseLinear(weight, bias, gelu, activation)


#: The int8 engine's quantized layers: the attention output and both feed-forward layers (~80% of the FLOPs).
#: The fused QKV projection is not quantized: it is the layer most sensitive to quantization (with it in int8, the
#: worst cosine against float32 on short texts drops below the int8 engine's bound of 0.99). It runs in bfloat16
#: where the CPU has bfloat16 hardware (:class:`Bfloat16Linear`), else in float32.
INT8_ROLES = ("attn_out", "ffn_in", "ffn_out")


def int8_linear_factory(
    config: BertConfig, weights: dict[str, torch.Tensor], device: torch.device, calibration: list[list[int]]
) -> LinearFactory:
    """Linear layers of the int8 CPU engine, with SmoothQuant factors calibrated on ``calibration``.

    A float32 copy of the model runs the calibration batches once, recording max |input| per channel of every
    layer in :data:`INT8_ROLES`; the factory returned builds those as :class:`Int8Linear` with their recorded
    maxima, the rest as float32 layers.
    """
    recorders: dict[tuple[int, str], _ActivationMax] = {}

    def recording(n: int, role: str, weight: torch.Tensor, bias: torch.Tensor, gelu: bool):
        linear = DenseLinear(weight, bias, gelu)
        if role not in INT8_ROLES:
            return linear
        return recorders.setdefault((n, role), _ActivationMax(linear))

    float_model = PackedBert(config, weights, device, torch.float32, recording)
    with torch.inference_mode():
        for start in range(0, len(calibration), 32):
            float_model.forward(pack(calibration[start : start + 32], "per_sequence", device))
    float_linear = float_linear_factory(device, torch.float32)
    bfloat16_qkv = cpu_has_native_bfloat16() and onednn_linear_supported()

    def make(n: int, role: str, weight: torch.Tensor, bias: torch.Tensor, gelu: bool):
        if role not in INT8_ROLES:
            if bfloat16_qkv:
                return Bfloat16Linear(weight, bias, gelu)
            return float_linear(n, role, weight, bias, gelu)
        return Int8Linear(weight, bias, gelu=gelu, act_max=recorders[n, role].max)

    return make


def int8_linear_supported() -> bool:
    """Whether this torch build has oneDNN's int8 linear kernels (x86 builds with mkldnn do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
