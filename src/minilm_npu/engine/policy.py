"""Engine policy per device: which attention strategy, shapes, dtypes and host allocator the packed engine uses.

:mod:`minilm_npu.devices` says which devices exist; this module says how the engine runs on each kind. The packed
engine reads it once, when it is built (:class:`~minilm_npu.engine.packed.PackedBackend`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..devices import varlen_attention
from .cpu_kernels import bfloat16_isa

# -- host memory ---------------------------------------------------------------------------------------------

#: glibc ``mallopt`` parameters (malloc.h) and the value the CPU engine sets for both.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HOST_ALLOCATOR_THRESHOLD = 1 << 30
_host_allocator_tuned: bool | None = None


def tune_host_allocator() -> bool:
    """Let the process keep freed activation memory instead of returning it to the OS after every operator.

    Why: glibc serves large allocations with a fresh ``mmap`` (its threshold adapts, up to 32 MiB) and trims the
    heap behind freed blocks, so activation tensors of a CPU forward pass (a ``[600, 1536]`` feed-forward output is
    3.7 MB) keep being page-faulted in anew: thousands of page faults per batch, a few hundred with the thresholds
    raised to 1 GiB, and less time on mixed batches (no change on batches of short sentences). Freed blocks staying
    reusable is what PyTorch's CUDA caching allocator or TEI's mimalloc give their engines too. The price: the
    process holds on to its peak activation memory (hundreds of MB at the largest ``max_batch_tokens``) instead of
    giving it back between batches.

    Process-wide and done once; skipped when the process already chose its allocator (``LD_PRELOAD`` of
    jemalloc/tcmalloc/mimalloc, ``MALLOC_*`` or ``GLIBC_TUNABLES`` settings) or is not on glibc.

    Returns:
        Whether the thresholds are now set by this function.
    """
    global _host_allocator_tuned
    if _host_allocator_tuned is None:
        _host_allocator_tuned = False
        import ctypes
        import os

        chosen = (
            "malloc" in os.environ.get("LD_PRELOAD", "")
            or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
            or any(name.startswith("MALLOC_") for name in os.environ)
        )
        if not chosen:
            try:
                libc = ctypes.CDLL("libc.so.6")
                _host_allocator_tuned = bool(
                    libc.mallopt(_M_MMAP_THRESHOLD, HOST_ALLOCATOR_THRESHOLD)
                    and libc.mallopt(_M_TRIM_THRESHOLD, HOST_ALLOCATOR_THRESHOLD)
                )
            except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to tune
                pass
    return _host_allocator_tuned


# -- engine choices per device (used by the packed engine) ---------------------------------------------------

#: Attention-block widths for graph-mode devices (Ascend): every padded block is rounded up to one of these, so
#: the compiled graphs cover a handful of shapes instead of one per sequence length.
STATIC_LENGTH_GEARS = (16, 32, 64, 128, 256, 512)


def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN computes bfloat16 in hardware here (AVX512-BF16 or AMX, within ``ONEDNN_MAX_CPU_ISA``: see
    :func:`~minilm_npu.engine.cpu_kernels.effective_flags`); elsewhere it is emulated and slow, and under a cap
    below AVX-512 oneDNN refuses the bfloat16 weight reorder the native path starts with."""
    return bfloat16_isa() is not None


def dtype_unsupported_reason(device: torch.device, dtype: str) -> str | None:
    """Why the packed engine cannot run ``dtype`` on ``device``, or None when it can.

    * int8 (int8 weights, dynamic activation quantization) uses oneDNN's x86 int8 kernels: CPU only.
    * float16 on a CPU: no x86 CPU here has fast float16 GEMMs (it runs many times slower than float32), so it is
      refused rather than silently slow; bfloat16 is allowed (native on AVX512-BF16/AMX CPUs, emulated elsewhere).
    """
    if dtype == "int8" and device.type != "cpu":
        return f"dtype 'int8' runs on the CPU only (oneDNN int8 kernels); on {device} use 'float16' or 'bfloat16'"
    if dtype == "float16" and device.type == "cpu":
        return (
            "dtype 'float16' is for accelerators; CPUs have no fast float16 matrix units. On the CPU use "
            "'float32' (exact), 'int8' (fastest) or 'bfloat16'"
        )
    return None


def uses_static_shapes(device: torch.device) -> bool:
    """Graph-mode devices (Ascend) recompile per new shape, so padded blocks are rounded to a few gears."""
    return device.type == "npu"


def round_to_gear(length: int, gears: tuple[int, ...] = STATIC_LENGTH_GEARS) -> int:
    """The smallest gear at least ``length`` (``length`` itself past the last gear)."""
    return next((gear for gear in gears if gear >= length), length)


#: Significant binary digits a CPU forward's token count keeps (:func:`round_tokens_to_gear`).
TOKEN_GEAR_BITS = 4
#: ``MINILM_NPU_TOKEN_GEARS=0`` runs every CPU forward on its exact token count (comparisons, diagnosis).
TOKEN_GEARS_ENV = "MINILM_NPU_TOKEN_GEARS"


def round_tokens_to_gear(tokens: int, bits: int = TOKEN_GEAR_BITS) -> int:
    """``tokens`` rounded up to ``bits`` significant binary digits: exact up to ``2**bits``, then ``2**(bits - 1)``
    gears per octave (with 4 bits: 17 -> 18, 100 -> 104, 450 -> 480, 626 -> 640), so at most ``2**(1 - bits)`` of
    the rows are padding.

    Why the CPU engine rounds at all: oneDNN, under every CPU linear layer and GELU, keeps one primitive (with its
    JIT-compiled kernels) per row count and thread count in its primitive cache, and torch's ideep layer keeps its
    own per shape: a few MB for each new token count (more on AVX-512 and AMX than on AVX2). Packed batches have a
    new token count almost every time, so a long job or a busy server grew by gigabytes, and once the caches were
    full (1,024 entries each) evicting and re-creating primitives fragmented the heap and kept it growing. With the
    count rounded, a process meets at most ``2**bits`` shapes below ``2**bits`` tokens and ``2**(bits - 1)`` per
    octave above, and caches each once. The price is the padding rows' compute (about 3 % on batches of short
    sentences with 4 bits); docs/engine.md has the measurements.
    """
    step = 1 << max(0, (tokens - 1).bit_length() - bits)
    return -(-tokens // step) * step


def round_to_power_of_two(count: int) -> int:
    """The smallest power of two at least ``count`` (batch sizes for static-shape devices)."""
    return 1 << max(0, int(count) - 1).bit_length()


def warmup_lengths(device: torch.device) -> list[list[int]]:
    """Sequence lengths to run once before serving: one tiny batch on CPUs, every gear on static-shape devices."""
    if uses_static_shapes(device):
        return [[gear] for gear in STATIC_LENGTH_GEARS if gear <= 256]
    return [[8, 3]]


@dataclass(frozen=True)
class AttentionPlan:
    """How the packed engine runs attention on a device, and why (``minilm-npu check`` prints both); fixed when
    the engine is built.

    Attributes:
        strategy: ``"per_sequence"``, ``"bucketed"``, ``"padded"`` or ``"varlen"`` (see
            :mod:`minilm_npu.engine.bert`).
        square_mask: Padded blocks get a full ``[rows, 1, width, width]`` key mask instead of a broadcast
            ``[rows, 1, 1, width]`` one.
        reason: One line on why.
        gears: Width rounding of padded attention blocks (static-shape devices), or None.
        row_gears: Rounding of a padded block's sequence count (static-shape devices), or None.
        token_gears: Rounding of a forward's token count (the packed tensor's rows; CPU), or None.
    """

    strategy: str
    square_mask: bool = False
    reason: str = ""
    gears: Callable[[int], int] | None = None
    row_gears: Callable[[int], int] | None = None
    token_gears: Callable[[int], int] | None = None


def attention_plan(device_type: str, dtype: str) -> AttentionPlan:
    """Pick the attention strategy for a device type and dtype.

    * CPU: ``"bucketed"``: sequences of similar length share one padded SDPA call (a little faster than one call
      per sequence on mixed batches, far faster than one padded block, whose quadratic cost is driven by the
      longest sequence); the token count rounded up to a gear (:func:`round_tokens_to_gear`), so that the
      per-shape caches under CPU kernels stay bounded.
    * CUDA (and MPS): ``"padded"``: one length-sorted padded block, one SDPA launch per layer.
    * Ascend, float16/bfloat16 with torch_npu's ``npu_fusion_attention``: ``"varlen"``: the flash kernel on the
      packed ``[tokens, heads, head_dim]`` tensor with cumulative lengths (``input_layout="TND"``), as
      vllm-ascend runs encoder attention: no padding, no gathers, no mask. Its documented query dtypes are
      float16/bfloat16, so float32 does not take it.
    * Ascend otherwise: ``"padded"`` with a square mask: SDPA on the NPU dispatches to ``npu_fusion_attention``,
      which takes bool masks shaped ``[B,N,S,S]``, ``[B,1,S,S]``, ``[1,1,S,S]`` or ``[S,S]``; broadcasting a
      ``[B,1,1,S]`` mask only arrived in op-plugin 26.1.0 (Ascend/op-plugin), older releases fail with
      "unsupported atten_mask shape".

    Graph-mode devices (Ascend) compile one graph per attention-block shape, so their padded blocks round widths
    to :data:`STATIC_LENGTH_GEARS` and sequence counts to powers of two: a handful of graphs serve every batch.
    """
    if device_type == "cpu":
        import os

        if os.environ.get(TOKEN_GEARS_ENV, "1").strip().lower() in ("0", "false", "off", "no"):
            return AttentionPlan(
                "bucketed",
                False,
                f"CPU: similar-length sequences share one SDPA call; exact token counts ({TOKEN_GEARS_ENV}=0)",
            )
        return AttentionPlan(
            "bucketed",
            False,
            f"CPU: similar-length sequences share one SDPA call; token counts rounded to {TOKEN_GEAR_BITS} significant "
            "bits (bounded per-shape kernel caches)",
            token_gears=round_tokens_to_gear,
        )
    if device_type != "npu":
        return AttentionPlan("padded", False, "one length-sorted padded SDPA block per layer")
    gears = {"gears": round_to_gear, "row_gears": round_to_power_of_two}
    if dtype in ("float16", "bfloat16") and varlen_attention(device_type) is not None:
        return AttentionPlan(
            "varlen",
            False,
            "torch_npu.npu_fusion_attention, TND layout, cumulative lengths: packed tokens, no padding, no mask",
            **gears,
        )
    why = (
        "float32: npu_fusion_attention's TND path is documented for float16/bfloat16 only"
        if dtype not in ("float16", "bfloat16")
        else "this torch_npu has no npu_fusion_attention"
    )
    return AttentionPlan(
        "padded",
        True,
        f"padded SDPA with a full [rows,1,width,width] mask ({why}; op-plugin "
        "before 26.1.0 rejects broadcast [rows,1,1,width] masks)",
        **gears,
    )
