"""Device layer: one string in, torch devices out, and every device-specific detail in one place.

All device code goes through generic torch APIs (``torch.device``, ``torch.get_device_module``,
``torch.accelerator`` where present) so that an Ascend NPU takes exactly the same path as a CUDA GPU.
The Ascend-specific lines live here only: :func:`_import_torch_npu` (``import torch_npu`` registers the ``npu``
device type, ``torch.npu``, with torch, after which the generic calls work unchanged) and the short "Ascend
kernels" section (:func:`varlen_attention`, :func:`exact_gelu`), the two places the engine calls a torch_npu
kernel instead of a generic op, each with the reason. How the engine runs on each kind of device (attention
strategy, gears, dtypes, host allocator) is engine policy, in :mod:`minilm_npu.engine.policy`. torch_npu is
imported lazily, only when an NPU is asked for or ``"auto"`` is looking for one, so CPU/CUDA users never pay for
it.

Of minilm_npu it imports only :class:`~minilm_npu.errors.DeviceError` (re-exported here).
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

from .errors import DeviceError

# Order in which "auto" looks for an accelerator: Ascend first (the project's first target), then CUDA, then
# Apple's MPS, then the CPU.
AUTO_ORDER = ("npu", "cuda", "mps", "cpu")
KNOWN_TYPES = ("cpu", "cuda", "npu", "mps")
_SPEC = re.compile(r"^(?P<type>[a-z]+)(?::(?P<index>\d+))?$")


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


def split_devices(spec: str | torch.device) -> list[str]:
    """The entries of a device string, stripped and lower-cased (``"NPU:0, npu:1"`` -> ``["npu:0", "npu:1"]``).

    The syntax half of :func:`parse_devices`, for callers that must not ask this machine what exists (a Ray
    driver plans actors for the cluster's devices) or that check each entry on its own (the device doctor).

    Raises:
        DeviceError: an empty string or an empty entry (``"cpu,"``).
    """
    parts = [part.strip().lower() for part in str(spec).split(",")]
    if not parts or any(not part for part in parts):
        raise _unavailable(str(spec), "is not a device name")
    return parts


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
    devices: list[torch.device] = []
    for part in split_devices(spec):
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


def release_host_threads() -> bool:
    """Release the OpenMP worker threads that the calling thread's parallel regions started.

    Why: OpenMP keeps one pool of worker threads per thread that ever ran a parallel region, and GNU libgomp (which
    torch's x86 Linux wheels ship) stops its workers from spin-waiting between regions once the process holds more
    OpenMP threads than CPUs: every op of a forward then ends in a sleep and a wake-up. A server loads and warms
    the model on one thread and runs it on another, so it holds two pools, and every forward on the serving thread
    pays those sleeps until the loading thread's pool is released with this call (OpenMP 5.0's
    ``omp_pause_resource_all(omp_pause_hard)``). Measurements: docs/benchmarks.md (server).

    Returns:
        True if an OpenMP runtime took the call; False where none is loaded (nothing to release).
    """
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            paths = {line.split()[-1] for line in handle if re.search(r"/lib(gomp|omp|iomp5)[^/]*\.so", line)}
    except OSError:
        return False
    for path in sorted(paths):
        pause = getattr(ctypes.CDLL(path), "omp_pause_resource_all", None)
        if pause is not None:
            return pause(2) == 0  # 2 = omp_pause_hard: the threads are ended, not parked
    return False


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
    for indices in by_dtype.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices])
        moved = (flat.pin_memory() if pin else flat).to(device, non_blocking=pin)
        offset = 0
        for i in indices:
            count = tensors[i].numel()
            out[i] = moved[offset : offset + count].view(tensors[i].shape)
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
    capture: Callable[..., Any]  # context manager: capture(graph, pool=...)
    pool_handle: Callable[[], Any]  # a memory pool several graphs share (they are replayed one at a time)
    stream: Callable[..., Any]  # device stream class, for the warm-up runs capture needs
    use_stream: Callable[..., Any]  # context manager that makes a stream current
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
    return GraphAPI(
        graph_class, module.graph, module.graph_pool_handle, module.Stream, module.stream, module.current_stream
    )


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
        return kernel(
            q, k, v, q.shape[1], input_layout="TND", scale=scale, actual_seq_qlen=ends, actual_seq_kvlen=ends
        )[0]

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
