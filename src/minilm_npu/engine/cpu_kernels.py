"""Which CPU kernels the packed engine uses, chosen at load time from the instructions oneDNN will really run.

The CPUs this project meets differ from one day to the next (AVX2-only Zen 3, AVX-512 + VNNI + BF16 Zen 4 and
Xeons, AMX Sapphire Rapids), so nothing here is decided from the machine the code was written on: the flags are
read from ``/proc/cpuinfo`` of the machine that loads the model. oneDNN (which torch's CPU linears and int8
kernels call) dispatches on the same flags at run time, *within a cap*: ``ONEDNN_MAX_CPU_ISA`` (or the older
``DNNL_MAX_CPU_ISA``) makes it run the kernels of an older CPU, and ATen's ``ATEN_CPU_CAPABILITY`` does the same
for torch's own vectorised kernels (and Inductor's generated code). :func:`effective_flags` is the one place that
intersects the two (the CPU's flags, the cap); :func:`kernel_plan`, ``minilm-npu check``, the benchmarks and the
engine's own choices (:func:`minilm_npu.engine.policy.cpu_has_native_bfloat16`) all read it, so the plan names
what oneDNN runs, and the engine never takes a path (a bfloat16 weight reorder) that oneDNN refuses under the cap.
"""

from __future__ import annotations

import functools
import os

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

#: oneDNN's x86 instruction-set levels (src/cpu/x64/cpu_isa_traits.hpp), oldest first: the name
#: ``ONEDNN_MAX_CPU_ISA`` takes, the levels it extends, and the ``/proc/cpuinfo`` flags it adds. A cap allows a
#: level when the level's whole ancestry is in the cap's (oneDNN's ISA bit masks): ``AVX512_CORE`` allows ``AVX2``
#: but not ``AVX2_VNNI``, ``AVX512_CORE_FP16`` (and so AMX) allows ``AVX2_VNNI`` too. FMA, which every AVX2 CPU
#: has, is listed with AVX2 so that an SSE/AVX cap also drops it.
ONEDNN_LEVELS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "SSE41": ((), ("sse4_1",)),
    "AVX": (("SSE41",), ("avx",)),
    "AVX2": (("AVX",), ("avx2", "fma")),
    "AVX2_VNNI": (("AVX2",), ("avx_vnni",)),
    "AVX2_VNNI_2": (("AVX2_VNNI",), ("avx_vnni_int8", "avx_ne_convert")),
    "AVX512_CORE": (("AVX2",), ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
    "AVX512_CORE_VNNI": (("AVX512_CORE",), ("avx512_vnni",)),
    "AVX512_CORE_BF16": (("AVX512_CORE_VNNI",), ("avx512_bf16",)),
    "AVX512_CORE_FP16": (("AVX512_CORE_BF16", "AVX2_VNNI"), ("avx512_fp16",)),
    "AVX512_CORE_AMX": (("AVX512_CORE_FP16",), ("amx_tile", "amx_int8", "amx_bf16")),
    "AVX512_CORE_AMX_FP16": (("AVX512_CORE_AMX",), ("amx_fp16",)),
}
#: Other spellings oneDNN accepts for the same caps (its AVX10 names); ``DEFAULT`` and ``ALL`` mean no cap.
ONEDNN_ALIASES = {
    "AVX10_1_512": "AVX512_CORE_FP16",
    "AVX10_1_512_AMX": "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16": "AVX512_CORE_AMX_FP16",
}
#: ATen's CPU capabilities (``ATEN_CPU_CAPABILITY``) on x86, oldest first, and the flags ATen checks for each.
#: ATen believes the variable without checking the CPU, so a capability is only *reachable* with its flags.
ATEN_CAPABILITIES: dict[str, tuple[str, ...]] = {
    "default": (),
    "avx2": ("avx2", "fma"),
    "avx512": ("avx512vl", "avx512bw", "avx512dq", "fma"),
}


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


def onednn_cap(environ: dict[str, str] | None = None) -> str | None:
    """The oneDNN level ``ONEDNN_MAX_CPU_ISA`` (else ``DNNL_MAX_CPU_ISA``) caps oneDNN at, upper case with
    oneDNN's aliases resolved; None when unset, ``DEFAULT``/``ALL``, or a value oneDNN ignores (no cap)."""
    environ = os.environ if environ is None else environ
    value = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    value = ONEDNN_ALIASES.get(value, value)
    return value if value in ONEDNN_LEVELS else None


def _ancestry(level: str) -> set[str]:
    parents, _ = ONEDNN_LEVELS[level]
    return {level}.union(*(_ancestry(parent) for parent in parents))


def level_flags(level: str) -> set[str]:
    """Every ``/proc/cpuinfo`` flag a oneDNN level needs (its own and its ancestors')."""
    return {flag for name in _ancestry(level) for flag in ONEDNN_LEVELS[name][1]}


def onednn_levels(flags: frozenset[str] | None = None, cap: str | None = None) -> list[str]:
    """The oneDNN levels this CPU can run under the cap (default: the environment's), oldest first.

    Args:
        flags: The CPU's flags (default: this CPU's).
        cap: A level name (or alias); ``"DEFAULT"`` for none; None reads ``ONEDNN_MAX_CPU_ISA``.
    """
    flags = cpu_flags() if flags is None else flags
    cap = onednn_cap() if cap is None else onednn_cap({"ONEDNN_MAX_CPU_ISA": cap})
    allowed = _ancestry(cap) if cap else set(ONEDNN_LEVELS)
    return [level for level in ONEDNN_LEVELS if _ancestry(level) <= allowed and level_flags(level) <= flags]


def onednn_isa(flags: frozenset[str] | None = None, cap: str | None = None) -> str:
    """The best level oneDNN runs here under the cap (what its verbose mode reports as ``isa:``); ``"none"``
    below SSE4.1. Several levels can be best at once only in theory (AVX2_VNNI_2 next to AVX-512): the later one
    in :data:`ONEDNN_LEVELS` is named."""
    levels = onednn_levels(flags, cap)
    return levels[-1] if levels else "none"


def effective_flags(flags: frozenset[str] | None = None, cap: str | None = None) -> frozenset[str]:
    """The CPU's flags that oneDNN may use under the cap: the flags of every reachable level (:func:`onednn_levels`)
    plus the flags no level governs. Everything that decides a CPU kernel reads this, not the raw flags.

    Args:
        flags: The CPU's flags (default: this CPU's).
        cap: As :func:`onednn_levels`.
    """
    flags = cpu_flags() if flags is None else flags
    governed = {flag for _, added in ONEDNN_LEVELS.values() for flag in added}
    usable = {flag for level in onednn_levels(flags, cap) for flag in ONEDNN_LEVELS[level][1]}
    return frozenset(flag for flag in flags if flag not in governed or flag in usable)


def aten_capability(flags: frozenset[str] | None = None, environ: dict[str, str] | None = None) -> str:
    """ATen's vector capability here (what ``torch.backends.cpu.get_cpu_capability()`` reports, lower case):
    ``ATEN_CPU_CAPABILITY`` when set to a known value (ATen believes it), else the best the flags allow."""
    flags = cpu_flags() if flags is None else flags
    environ = os.environ if environ is None else environ
    forced = environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if forced in ATEN_CAPABILITIES:
        return forced
    return [name for name, needed in ATEN_CAPABILITIES.items() if set(needed) <= flags][-1]


def cap_summary(flags: frozenset[str] | None = None) -> str | None:
    """One line on the caps in force (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``) and what they leave of this
    CPU, or None when neither is set (the CPU runs its own kernels)."""
    flags = cpu_flags() if flags is None else flags
    parts = []
    raw = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if raw:
        name = "ONEDNN_MAX_CPU_ISA" if os.environ.get("ONEDNN_MAX_CPU_ISA") else "DNNL_MAX_CPU_ISA"
        parts.append(
            f"{name}={raw}: oneDNN runs {onednn_isa(flags)} (this CPU's best: {onednn_isa(flags, 'DEFAULT')})"
            + ("" if onednn_cap() or raw.strip().upper() in ("DEFAULT", "ALL") else "; not a level oneDNN knows")
        )
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        best = aten_capability(flags, {})
        parts.append(
            f"ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']}: ATen runs {aten_capability(flags)} "
            f"(this CPU's best: {best})"
        )
    return "; ".join(parts) or None


def isa_summary(flags: frozenset[str] | None = None) -> str:
    """The flags of :data:`ISA_FLAGS` this CPU has, space-separated (``"none of ..."`` when it has none)."""
    flags = cpu_flags() if flags is None else flags
    present = [flag for flag in ISA_FLAGS if flag in flags]
    return " ".join(present) if present else "none of " + " ".join(ISA_FLAGS)


def int8_isa(flags: frozenset[str] | None = None) -> str:
    """The instructions oneDNN's u8 x s8 int8 GEMM runs with, best first (``flags``: effective ones, default
    :func:`effective_flags`)."""
    flags = effective_flags() if flags is None else flags
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
    if "sse4_1" in flags:
        return "SSE4.1 (pmaddubsw, 128-bit, no VNNI)"
    return "reference code (no SSE4.1)"


def float32_isa(flags: frozenset[str] | None = None) -> str:
    """The vector width oneDNN's float32 GEMM uses (``flags``: effective ones, default :func:`effective_flags`)."""
    flags = effective_flags() if flags is None else flags
    if "avx512f" in flags:
        return "AVX-512 FMA"
    if "avx2" in flags and "fma" in flags:
        return "AVX2 FMA"
    if "avx" in flags:
        return "AVX (no FMA)"
    if "sse4_1" in flags:
        return "SSE4.1 (no FMA)"
    return "reference code (no SSE4.1)"


def bfloat16_isa(flags: frozenset[str] | None = None) -> str | None:
    """The bfloat16 dot-product instructions oneDNN runs, or None where bfloat16 is emulated (``flags``: effective
    ones, default :func:`effective_flags`)."""
    flags = effective_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "AMX-BF16 tiles"
    if "avx512_bf16" in flags:
        return "AVX512-BF16 (vdpbf16ps)"
    return None


def onednn_bfloat16_supported(flags: frozenset[str] | None = None) -> bool:
    """Whether oneDNN takes bfloat16 at all (``flags``: effective ones, default :func:`effective_flags`): from
    AVX512_CORE (converting in software, without AVX512-BF16) or AVX2_VNNI_2 (``avx_ne_convert``) up. torch checks
    the same before a bfloat16 weight reorder and refuses it below; fast bfloat16 needs :func:`bfloat16_isa`."""
    flags = effective_flags() if flags is None else flags
    return set(ONEDNN_LEVELS["AVX512_CORE"][1]) <= flags or set(ONEDNN_LEVELS["AVX2_VNNI_2"][1]) <= flags


def kernel_plan(flags: frozenset[str] | None = None) -> dict[str, str]:
    """Per CPU dtype of the packed engine: the linear-layer kernel it picks and the instructions it runs on
    (``flags``: effective ones, default :func:`effective_flags`: this CPU under the environment's cap)."""
    flags = effective_flags() if flags is None else flags
    bf16 = bfloat16_isa(flags)
    return {
        "float32": f"oneDNN linear on a pre-reordered weight ({float32_isa(flags)})",
        "int8": (
            f"oneDNN qlinear u8 x s8, per-token activation scales ({int8_isa(flags)}); QKV in "
            + (f"bfloat16 ({bf16})" if bf16 else "float32 (no bfloat16 instructions in use)")
        ),
        "bfloat16": (
            f"oneDNN bfloat16 linear on a pre-reordered weight ({bf16})"
            if bf16
            else "torch bfloat16 GEMM, emulated through float32 (no AVX512-BF16/AMX: slower than float32)"
        ),
    }
