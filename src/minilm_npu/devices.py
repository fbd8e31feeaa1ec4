"""Device layer: one string in, torch devices out, and every device-specific detail in one place.

All device code goes through generic torch APIs (``torch.device``, ``torch.get_device_module``,
``torch.accelerator`` where present) so that an Ascend NPU takes exactly the same path as a CUDA GPU.
The Ascend-specific lines live here only: :func:`_import_torch_npu` (``import torch_npu`` registers the ``npu``
device type, ``torch.npu``, with torch, after which the generic calls work unchanged) and the short "Ascend
kernels" section (:func:`varlen_attention`, :func:`exact_gelu`), the two places the engine calls a torch_npu
kernel instead of a generic op, each with the reason. torch_npu is imported lazily, only when an NPU is asked for
or ``"auto"`` is looking for one, so CPU/CUDA users never pay for it.

This module imports nothing else of minilm_npu.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# Order in which "auto" looks for an accelerator: Ascend first (the project's first target), then CUDA, then
# Apple's MPS, then the CPU.
AUTO_ORDER = ("npu", "cuda", "mps", "cpu")
KNOWN_TYPES = ("cpu", "cuda", "npu", "mps")
_SPEC = re.compile(r"^(?P<type>[a-z]+)(?::(?P<index>\d+))?$")


class DeviceError(ValueError):
    """A device string that cannot be honoured on this machine; the message lists what is available."""


_torch_npu_state: bool | None = None


def _import_torch_npu() -> bool:
    """Import torch_npu once, if installed; return whether the ``npu`` device type is now registered.

    Ascend-specific: torch_npu is a plug-in that adds ``torch.npu`` and the ``npu`` device type to torch.
    Nothing else in the project imports it.
    """
    global _torch_npu_state
    if _torch_npu_state is None:
        if importlib.util.find_spec("torch_npu") is None:
            _torch_npu_state = False
        else:
            try:
                importlib.import_module("torch_npu")
                _torch_npu_state = True
            except Exception:  # a broken CANN install must not break CPU/CUDA users
                _torch_npu_state = False
    return _torch_npu_state


def device_module(device_type: str):
    """The torch device module (``torch.cuda``, ``torch.npu``, ``torch.mps``, ``torch.cpu``) for a type."""
    if device_type == "npu":
        _import_torch_npu()
    return torch.get_device_module(device_type)


def device_count(device_type: str) -> int:
    """How many devices of a type torch sees (1 for cpu, 0 when the type is absent)."""
    if device_type == "cpu":
        return 1
    if device_type == "npu" and not _import_torch_npu():
        return 0
    if device_type == "mps":
        return 1 if torch.backends.mps.is_available() else 0
    try:
        module = device_module(device_type)
        return int(module.device_count()) if module.is_available() else 0
    except (AttributeError, RuntimeError):
        return 0


def available_devices() -> list[str]:
    """Every device torch can use here, as strings (``["cpu", "cuda:0", ...]``)."""
    found = ["cpu"]
    for device_type in ("npu", "cuda"):
        found += [f"{device_type}:{i}" for i in range(device_count(device_type))]
    if device_count("mps"):
        found.append("mps")
    return found


def _unavailable(spec: str, reason: str) -> DeviceError:
    return DeviceError(
        f"device {spec!r} {reason}. Available devices: {', '.join(available_devices())}. "
        "Use 'auto', 'cpu', 'cuda', 'cuda:1', 'npu', 'npu:0' or a comma-separated list such as 'npu:0,npu:1'."
    )


def _parse_one(spec: str) -> list[torch.device]:
    match = _SPEC.match(spec)
    if not match or match["type"] not in KNOWN_TYPES + ("auto",):
        raise _unavailable(spec, "is not a device name")
    device_type, index = match["type"], match["index"]
    if device_type == "auto":
        if index is not None:
            raise _unavailable(spec, "is not a device name")
        return [auto_device()]
    if device_type in ("cpu", "mps"):
        if device_count(device_type) == 0:
            raise _unavailable(spec, "is not available on this machine")
        return [torch.device(device_type)]
    count = device_count(device_type)
    if count == 0:
        hint = " (torch_npu is not installed)" if device_type == "npu" and not _import_torch_npu() else ""
        raise _unavailable(spec, f"is not available on this machine{hint}")
    if index is None:  # a bare "cuda"/"npu" means every visible card
        return [torch.device(device_type, i) for i in range(count)]
    if int(index) >= count:
        raise _unavailable(spec, f"does not exist: {count} {device_type} device(s) visible")
    return [torch.device(device_type, int(index))]


def parse_devices(spec: str | torch.device = "auto") -> list[torch.device]:
    """Turn a device string into the list of torch devices it names.

    Args:
        spec: ``"auto"`` (npu → cuda → mps → cpu, first card), ``"cpu"``, ``"cuda"`` / ``"npu"`` (every visible
            card), ``"cuda:1"``, ``"npu:0"``, or a comma-separated list such as ``"npu:0,npu:1"``. Repeating a
            device (``"cpu,cpu"``) gives one worker per entry, which is how multi-worker code is tested on a CPU.

    Returns:
        One or more torch devices, in the order given.

    Raises:
        DeviceError: the string names no device, or one that is not available here; the message lists what is.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    parts = [part.strip().lower() for part in str(spec).split(",")]
    if not parts or any(not part for part in parts):
        raise _unavailable(str(spec), "is not a device name")
    devices: list[torch.device] = []
    for part in parts:
        devices += _parse_one(part)
    return devices


def auto_device() -> torch.device:
    """The best device here: the first NPU, else the first CUDA GPU, else MPS, else the CPU."""
    for device_type in AUTO_ORDER:
        if device_type == "cpu" or device_count(device_type) > 0:
            return torch.device(device_type, 0) if device_type in ("npu", "cuda") else torch.device(device_type)
    return torch.device("cpu")  # pragma: no cover - the loop always returns


def synchronize(device: torch.device) -> None:
    """Wait until every queued kernel on ``device`` has finished (a no-op on the CPU); use it around timings."""
    if device.type == "cpu":
        return
    if device.type == "mps":
        torch.mps.synchronize()
        return
    device_module(device.type).synchronize(device)


def to_device(tensors: list[torch.Tensor | None], device: torch.device) -> list[torch.Tensor | None]:
    """Move host tensors to ``device`` in one pinned, non-blocking copy per dtype (None entries stay None).

    Why: a blocking ``.to(device)`` per tensor waits for the queue to drain each time, and a copy from pageable
    memory is staged through a bounce buffer; Ascend's tuning guide and CUDA's both say to pin host memory and
    copy once with ``non_blocking=True``. The caching host allocator keeps a pinned buffer alive until its copy has
    run, so the host may go on at once. On the CPU the tensors are returned as they are.
    """
    if device.type == "cpu":
        return list(tensors)
    out: list[torch.Tensor | None] = list(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for index, tensor in enumerate(tensors):
        if tensor is not None:
            by_dtype.setdefault(tensor.dtype, []).append(index)
    pin = device.type in ("cuda", "npu")
    for dtype, indices in by_dtype.items():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices])
        moved = (flat.pin_memory() if pin else flat).to(device, non_blocking=pin)
        offset = 0
        for i in indices:
            count = tensors[i].numel()
            out[i] = moved[offset:offset + count].view(tensors[i].shape)
            offset += count
    return out


#: Set to ``0`` to run accelerators eagerly (no device graphs): an escape hatch and an A/B switch for benchmarks.
GRAPHS_ENV = "MINILM_NPU_GRAPHS"


@dataclass(frozen=True)
class GraphAPI:
    """The device-graph calls of one device type: capture a sequence of kernels once, replay it with one launch.

    CUDA: ``torch.cuda.CUDAGraph`` / ``torch.cuda.graph``. Ascend: torch_npu mirrors them as
    ``torch.npu.NPUGraph`` / ``torch.npu.graph`` (aclgraph) in the releases that have graph mode; the rest
    (streams, pool handles) has the same names on both device modules.
    """

    graph_class: type
    capture: Callable[..., Any]      # context manager: capture(graph, pool=...)
    pool_handle: Callable[[], Any]   # a memory pool several graphs share (they are replayed one at a time)
    stream: Callable[..., Any]       # device stream class, for the warm-up runs capture needs
    use_stream: Callable[..., Any]   # context manager that makes a stream current
    current_stream: Callable[[], Any]


def graph_api(device: torch.device) -> GraphAPI | None:
    """The device-graph API for ``device``, or None where there is none (CPU, MPS, an NPU stack without
    graph mode) or ``MINILM_NPU_GRAPHS=0`` asks for eager execution."""
    import os

    if os.environ.get(GRAPHS_ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    class_name = {"cuda": "CUDAGraph", "npu": "NPUGraph"}.get(device.type)
    if class_name is None:
        return None
    try:
        module = device_module(device.type)
    except (AttributeError, RuntimeError):
        return None
    graph_class = getattr(module, class_name, None)
    names = ("graph", "graph_pool_handle", "Stream", "stream", "current_stream")
    if graph_class is None or not all(hasattr(module, name) for name in names):
        return None
    return GraphAPI(graph_class, module.graph, module.graph_pool_handle, module.Stream, module.stream,
                    module.current_stream)


@dataclass(frozen=True)
class DeviceInfo:
    """What the device doctor and reports say about one device."""

    device: str
    name: str
    total_memory_bytes: int | None


def describe(device: torch.device) -> DeviceInfo:
    """Name and memory of a device, through the generic device module where it offers them."""
    if device.type == "cpu":
        import platform

        return DeviceInfo(str(device), platform.processor() or platform.machine(), None)
    module = device_module(device.type)
    name = module.get_device_name(device) if hasattr(module, "get_device_name") else device.type
    memory = None
    if hasattr(module, "get_device_properties"):
        memory = getattr(module.get_device_properties(device), "total_memory", None)
    return DeviceInfo(str(device), str(name), memory)


# -- host memory ---------------------------------------------------------------------------------------------

#: glibc ``mallopt`` parameters (malloc.h) and the value the CPU engine sets for both.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HOST_ALLOCATOR_THRESHOLD = 1 << 30
_host_allocator_tuned: bool | None = None


def tune_host_allocator() -> bool:
    """Let the process keep freed activation memory instead of returning it to the OS after every operator.

    Why: glibc serves large allocations with a fresh ``mmap`` (its threshold adapts, up to 32 MiB) and trims the
    heap behind freed blocks, so activation tensors of a CPU forward pass (a ``[600, 1536]`` feed-forward output is
    3.7 MB) keep being page-faulted in anew: ~8,000-9,000 page faults per 24-sentence batch, ~250 with the
    thresholds raised to 1 GiB. Measured on a 2-core Zen3 VM, process against process: up to ~10 % less time on
    mixed batches, within the noise on batches of short sentences. Freed blocks staying reusable is what PyTorch's
    CUDA caching allocator or TEI's mimalloc give their engines too. The price: the process holds on to its peak
    activation memory (hundreds of MB at the largest ``max_batch_tokens``) instead of giving it back between
    batches.

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

        chosen = ("malloc" in os.environ.get("LD_PRELOAD", "") or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
                  or any(name.startswith("MALLOC_") for name in os.environ))
        if not chosen:
            try:
                libc = ctypes.CDLL("libc.so.6")
                _host_allocator_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, HOST_ALLOCATOR_THRESHOLD)
                                             and libc.mallopt(_M_TRIM_THRESHOLD, HOST_ALLOCATOR_THRESHOLD))
            except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to tune
                pass
    return _host_allocator_tuned


# -- engine choices per device (used by the packed engine) ---------------------------------------------------

#: Attention-block widths for graph-mode devices (Ascend): every padded block is rounded up to one of these, so
#: the compiled graphs cover a handful of shapes instead of one per sequence length.
STATIC_LENGTH_GEARS = (16, 32, 64, 128, 256, 512)


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere it is emulated and slow."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def dtype_unsupported_reason(device: torch.device, dtype: str) -> str | None:
    """Why the packed engine cannot run ``dtype`` on ``device``, or None when it can.

    * int8 (int8 weights, dynamic activation quantization) uses oneDNN's x86 int8 kernels: CPU only.
    * float16 on a CPU: no x86 CPU here has fast float16 GEMMs (it runs 5-20x slower than float32), so it is
      refused rather than silently slow; bfloat16 is allowed (native on AVX512-BF16/AMX CPUs, emulated elsewhere).
    """
    if dtype == "int8" and device.type != "cpu":
        return (f"dtype 'int8' runs on the CPU only (oneDNN int8 kernels); on {device} use 'float16' or "
                "'bfloat16'")
    if dtype == "float16" and device.type == "cpu":
        return ("dtype 'float16' is for accelerators; CPUs have no fast float16 matrix units. On the CPU use "
                "'float32' (exact), 'int8' (fastest) or 'bfloat16'")
    return None


@dataclass(frozen=True)
class AttentionPlan:
    """How the packed engine runs attention on a device type, and why (``minilm-npu check`` prints both).

    Attributes:
        strategy: ``"bucketed"``, ``"padded"`` or ``"varlen"`` (see :mod:`minilm_npu.bert`).
        square_mask: Padded blocks get a full ``[rows, 1, width, width]`` key mask instead of a broadcast
            ``[rows, 1, 1, width]`` one.
        reason: One line on why.
    """

    strategy: str
    square_mask: bool
    reason: str


def attention_plan(device_type: str, dtype: str) -> AttentionPlan:
    """Pick the attention strategy for a device type and dtype.

    * CPU: ``"bucketed"``: sequences of similar length share one padded SDPA call (measured on a 2-core Zen3:
      slightly faster than one call per sequence on mixed batches, far faster than one padded block, whose
      quadratic cost is driven by the longest sequence).
    * CUDA (and MPS): ``"padded"``: one length-sorted padded block, one SDPA launch per layer.
    * Ascend, float16/bfloat16 with torch_npu's ``npu_fusion_attention``: ``"varlen"``: the flash kernel on the
      packed ``[tokens, heads, head_dim]`` tensor with cumulative lengths (``input_layout="TND"``), as
      vllm-ascend runs encoder attention: no padding, no gathers, no mask. Its documented query dtypes are
      float16/bfloat16, so float32 does not take it.
    * Ascend otherwise: ``"padded"`` with a square mask: SDPA on the NPU dispatches to ``npu_fusion_attention``,
      which takes bool masks shaped ``[B,N,S,S]``, ``[B,1,S,S]``, ``[1,1,S,S]`` or ``[S,S]``; broadcasting a
      ``[B,1,1,S]`` mask only arrived in op-plugin 26.1.0 (Ascend/op-plugin), older releases fail with
      "unsupported atten_mask shape".
    """
    if device_type == "cpu":
        return AttentionPlan("bucketed", False, "CPU: similar-length sequences share one SDPA call")
    if device_type != "npu":
        return AttentionPlan("padded", False, "one length-sorted padded SDPA block per layer")
    if dtype in ("float16", "bfloat16") and varlen_attention(device_type) is not None:
        return AttentionPlan("varlen", False, "torch_npu.npu_fusion_attention, TND layout, cumulative lengths: "
                                              "packed tokens, no padding, no mask")
    why = ("float32: npu_fusion_attention's TND path is documented for float16/bfloat16 only"
           if dtype not in ("float16", "bfloat16") else "this torch_npu has no npu_fusion_attention")
    return AttentionPlan("padded", True, f"padded SDPA with a full [rows,1,width,width] mask ({why}; op-plugin "
                                         "before 26.1.0 rejects broadcast [rows,1,1,width] masks)")


# -- Ascend kernels (the only code that calls into torch_npu) --------------------------------------------------


def torch_npu_module():
    """The imported ``torch_npu`` module, or None where it is not installed (or fails to import)."""
    return sys.modules.get("torch_npu") if _import_torch_npu() else None


VarlenAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[int], float], torch.Tensor]


def varlen_attention(device_type: str) -> VarlenAttention | None:
    """Attention over packed sequences without padding, where the device has such a kernel (Ascend), else None.

    The returned function takes ``q, k, v`` shaped ``[tokens, heads, head_dim]``, the cumulative sequence ends
    (``[l0, l0 + l1, ...]``, host ints: the kernel reads them on the host) and the softmax scale, and returns
    ``[tokens, heads, head_dim]``. Not capturable in a device graph (torch_npu documents npu_fusion_attention as
    such), so a captured NPU forward would need these lengths fixed per gear.
    """
    module = torch_npu_module() if device_type == "npu" else None
    kernel = getattr(module, "npu_fusion_attention", None)
    if kernel is None:
        return None

    def attention(q, k, v, cumulative_lengths, scale):
        ends = tuple(cumulative_lengths)
        return kernel(q, k, v, q.shape[1], input_layout="TND", scale=scale, actual_seq_qlen=ends,
                      actual_seq_kvlen=ends)[0]

    return attention


def exact_gelu(device_type: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The exact (erf) GELU for a device type, and a line saying which it is.

    Why: on Ascend, ``F.gelu`` ignores ``approximate`` and runs the tanh formula (op-plugin's npu_gelu
    documentation, Ascend/op-plugin); ``torch_npu.npu_gelu(x, approximate="none")`` is the exact one. BERT was
    trained with the erf GELU, and float32 exactness depends on it.
    """
    module = torch_npu_module() if device_type == "npu" else None
    npu_gelu = getattr(module, "npu_gelu", None)
    if npu_gelu is not None:
        return (lambda x: npu_gelu(x, approximate="none")), "torch_npu.npu_gelu(approximate='none') (exact erf)"
    if device_type == "npu":
        return F.gelu, "F.gelu: this torch_npu has no npu_gelu, so the NPU may run the tanh approximation"
    return F.gelu, "F.gelu (exact erf)"


def uses_static_shapes(device: torch.device) -> bool:
    """Graph-mode devices (Ascend) recompile per new shape, so padded blocks are rounded to a few gears."""
    return device.type == "npu"


def round_to_gear(length: int, gears: tuple[int, ...] = STATIC_LENGTH_GEARS) -> int:
    """The smallest gear at least ``length`` (``length`` itself past the last gear)."""
    return next((gear for gear in gears if gear >= length), length)


def round_to_power_of_two(count: int) -> int:
    """The smallest power of two at least ``count`` (batch sizes for static-shape devices)."""
    return 1 << max(0, int(count) - 1).bit_length()


def warmup_lengths(device: torch.device) -> list[list[int]]:
    """Sequence lengths to run once before serving: one tiny batch on CPUs, every gear on static-shape devices."""
    if uses_static_shapes(device):
        return [[gear] for gear in STATIC_LENGTH_GEARS if gear <= 256]
    return [[8, 3]]
