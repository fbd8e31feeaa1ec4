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


#: Forward sizes (tokens) that get their own thread-count estimate: a query, a batch of short texts, a large batch.
SIZE_CLASSES = (128, 2048)


class AdaptiveThreads:
    """Runs each CPU forward on one thread or on all of torch's threads, whichever this machine runs faster now.

    Why: every op of a forward is an OpenMP parallel region that ends in a barrier. On a quiet machine two threads
    win (a batch-1 forward streams its weights faster, a large batch has twice the FLOP rate). On a machine whose
    cores are shared (a busy server, a CI box, a VM, a container with a CPU quota), the barrier waits for a thread
    the OS has not scheduled, and each op costs a scheduler time slice. Measured on a 2-core Zen 4: one short
    sentence 30-140 ms on 2 threads against 9-30 ms on 1 at load ~7; a batch of 32 STS-B sentences 560-1,200 ms
    against 105-200 ms at load ~5.5 (at load 0, 2 threads are ~1.7x faster). Which side wins depends on the load,
    not on the CPU, so it is measured as the engine runs, per size class (:data:`SIZE_CLASSES`): both choices are
    run once untimed (a first call pays for allocations and any kernel compilation), then timed, then the faster
    is used, and the other is tried again every ``explore_every`` calls
    so a change of load is noticed (on a quiet machine that retry costs ~2-3 % of the mean).

    "All threads" is the calling thread's count when the forward starts (``torch.get_num_threads()``): the
    process's cores, or a :class:`~minilm_npu.encoder.DeviceWorker`'s share of them when several CPU workers split
    the cores (``device="cpu,cpu"``). ``torch.set_num_threads`` applies to the calling thread's later parallel
    regions; the count is restored after every forward.

    Args:
        explore_every: Calls (per size class) between two tries of the currently slower choice.
        margin: How much faster one thread must measure to be chosen: all threads are the right answer on a quiet
            machine, and a size class mixes batch sizes, so a noisy measurement should not flip it (under load
            one thread wins by far more: 5-9x above).
    """

    def __init__(self, explore_every: int = 32, margin: float = 1.25):
        self.explore_every, self.margin = explore_every, margin
        self.seconds_per_token: dict[tuple[int, int], float] = {}  # (size class, threads) -> smoothed estimate
        self.warmed: set[tuple[int, int]] = set()  # first calls are not timed: allocations, kernels compiled
        self.calls: dict[int, int] = {}

    @staticmethod
    def size_class(tokens: int) -> int:
        """Index of the :data:`SIZE_CLASSES` bound ``tokens`` falls under (``len(SIZE_CLASSES)`` above them all)."""
        return next((index for index, bound in enumerate(SIZE_CLASSES) if tokens <= bound), len(SIZE_CLASSES))

    def choice(self, size: int = 0, all_threads: int | None = None) -> int:
        """The thread count the next forward of size class ``size`` runs with, out of ``all_threads`` (default:
        the calling thread's count)."""
        import torch

        all_threads = all_threads or torch.get_num_threads()
        untried = [n for n in (1, all_threads) if (size, n) not in self.seconds_per_token]
        unwarmed = [n for n in untried if (size, n) not in self.warmed]
        if unwarmed:
            return unwarmed[0]
        if untried:
            return untried[0]
        one, every = self.seconds_per_token[size, 1], self.seconds_per_token[size, all_threads]
        best = 1 if one * self.margin < every else all_threads
        other = all_threads if best == 1 else 1
        return other if self.calls[size] % self.explore_every == 0 else best

    def run(self, tokens: int, forward):
        """``forward()``, on the thread count this object picks for a forward of ``tokens`` tokens."""
        import time

        import torch

        all_threads = torch.get_num_threads()
        if all_threads <= 1:
            return forward()
        size = self.size_class(tokens)
        self.calls[size] = self.calls.get(size, 0) + 1
        threads = self.choice(size, all_threads)
        if threads != all_threads:
            torch.set_num_threads(threads)
        start = time.perf_counter()
        try:
            return forward()
        finally:
            elapsed = (time.perf_counter() - start) / (tokens + 16)  # + fixed per-forward work, as tokens
            if threads != all_threads:
                torch.set_num_threads(all_threads)
            self._record(size, threads, elapsed)

    def _record(self, size: int, threads: int, seconds_per_token: float) -> None:
        if (size, threads) not in self.warmed:  # a first call: allocations, compilation; not a measurement
            self.warmed.add((size, threads))
            return
        previous = self.seconds_per_token.get((size, threads))
        self.seconds_per_token[size, threads] = (
            seconds_per_token if previous is None else 0.7 * previous + 0.3 * seconds_per_token
        )
