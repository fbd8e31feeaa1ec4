"""Which CPU kernels the packed engine uses, chosen at load time from the running CPU's flags.

The CPUs this project meets differ from one day to the next (AVX2-only Zen 3, AVX-512 + VNNI + BF16 Zen 4 and
Xeons, AMX Sapphire Rapids), so nothing here is decided from the machine the code was written on: the flags are
read from ``/proc/cpuinfo`` of the machine that loads the model, and oneDNN (which torch's CPU linears and int8
kernels call) dispatches on the same flags at run time. :func:`kernel_plan` names, per dtype, the kernel the
engine picks and the instruction set oneDNN will run it with; ``minilm-npu check`` prints it.
"""

from __future__ import annotations

import functools

#: The instruction-set flags that decide a CPU kernel's speed, in the order they are printed.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx_ne_convert",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Every flag of the first CPU in ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def isa_summary(flags: frozenset[str] | None = None) -> str:
    """The flags of :data:`ISA_FLAGS` this CPU has, space-separated (``"none of ..."`` when it has none)."""
    flags = cpu_flags() if flags is None else flags
    present = [flag for flag in ISA_FLAGS if flag in flags]
    return " ".join(present) if present else "none of " + " ".join(ISA_FLAGS)


def int8_isa(flags: frozenset[str] | None = None) -> str:
    """The instructions oneDNN's u8 x s8 int8 GEMM runs with on this CPU, best first."""
    flags = cpu_flags() if flags is None else flags
    if "amx_int8" in flags:
        return "AMX-INT8 tiles"
    if "avx512_vnni" in flags:
        return "AVX512-VNNI (vpdpbusd)"
    if "avx_vnni" in flags:
        return "AVX-VNNI (vpdpbusd, 256-bit)"
    if "avx512bw" in flags:
        return "AVX-512BW (vpmaddubsw, no VNNI)"
    if "avx2" in flags:
        return "AVX2 (vpmaddubsw, no VNNI)"
    return "reference code (no AVX2)"


def float32_isa(flags: frozenset[str] | None = None) -> str:
    """The vector width oneDNN's float32 GEMM uses on this CPU."""
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return "AVX-512 FMA"
    if "avx2" in flags and "fma" in flags:
        return "AVX2 FMA"
    return "SSE/reference"


def bfloat16_isa(flags: frozenset[str] | None = None) -> str | None:
    """The bfloat16 dot-product instructions of this CPU, or None where bfloat16 is emulated."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "AMX-BF16 tiles"
    if "avx512_bf16" in flags:
        return "AVX512-BF16 (vdpbf16ps)"
    return None


def kernel_plan(flags: frozenset[str] | None = None) -> dict[str, str]:
    """Per CPU dtype of the packed engine: the linear-layer kernel it picks here and the instructions it runs on."""
    flags = cpu_flags() if flags is None else flags
    bf16 = bfloat16_isa(flags)
    return {
        "float32": f"oneDNN linear on a pre-reordered weight ({float32_isa(flags)})",
        "int8": (
            f"oneDNN qlinear u8 x s8, per-token activation scales ({int8_isa(flags)}); QKV in "
            + (f"bfloat16 ({bf16})" if bf16 else "float32 (no bfloat16 hardware)")
        ),
        "bfloat16": (
            f"oneDNN bfloat16 linear on a pre-reordered weight ({bf16})"
            if bf16
            else "torch bfloat16 GEMM, emulated through float32 (no AVX512-BF16/AMX: slower than float32)"
        ),
    }
