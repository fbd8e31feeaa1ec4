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

import contextlib
import importlib
import importlib.util
import os
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
    Nothing else in the project imports it. Right after the import, before anything touches a card, the runtime is
    set up for the engine (:func:`_set_up_compile_mode`) and forked children are marked (:func:`_require_unforked`).

    Raises:
        DeviceError: this process is a fork of one that had torch_npu loaded, or ``MINILM_NPU_JIT_COMPILE`` holds
            a value that is not a switch.
    """
    global _torch_npu_state
    _require_unforked()
    if _torch_npu_state is None:
        if importlib.util.find_spec("torch_npu") is None:
            _torch_npu_state = False
        else:
            try:
                module = importlib.import_module("torch_npu")
            except Exception:  # a broken CANN install must not break CPU/CUDA users
                _torch_npu_state = False
            else:
                _set_up_compile_mode(module)
                _watch_for_fork()
                _torch_npu_state = True
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
    if device.type == "npu":
        _require_unforked()  # a model loaded before a fork reaches its card here, on every forward
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


# -- Ascend runtime: compile mode, forks, CPU fallbacks -------------------------------------------------------

#: ``1`` lets CANN compile operators online for every new input shape (torch_npu's ``jit_compile=True``); ``0``
#: runs the binary kernels CANN ships. Unset: the process's own earlier choice stands, else the engine picks ``0``.
JIT_COMPILE_ENV = "MINILM_NPU_JIT_COMPILE"
_SWITCH = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False}


@dataclass(frozen=True)
class CompileMode:
    """How CANN gets its operators in this process, and who chose it (``minilm-npu check`` shows both).

    Attributes:
        jit_compile: True: compiled online for each new shape; False: binary kernels; None: not known.
        source: Who chose, in a few words.
    """

    jit_compile: bool | None
    source: str


_compile_mode: CompileMode | None = None


def compile_mode() -> CompileMode | None:
    """The compile mode set up when torch_npu was imported; None before that, or where there is no torch_npu."""
    return _compile_mode


def _set_up_compile_mode(module: Any) -> None:
    """Run the binary kernels (``torch_npu.npu.set_compile_mode(jit_compile=False)``) unless the user chose.

    Why: with online compile, CANN builds each operator anew for every new batch size and sequence length, so the
    first calls at each shape take seconds ("slower than the CPU", as users of embedding models on Ascend report);
    the binary kernels take any shape at once. Huawei's text-embeddings-inference NPU port starts the same way,
    and keeps ReduceProd on online compile (torch_npu option ``NPU_FUZZY_COMPILE_BLACKLIST``), as here. The
    engine's static-shape gears (:mod:`minilm_npu.engine.policy`) stay: they bound the shapes either way.

    The user chooses with :data:`JIT_COMPILE_ENV`, or by setting the mode in this process before the engine loads
    (torch_npu's ``jitCompile`` option is then already set); either is left as it is.
    """
    global _compile_mode
    raw = os.environ.get(JIT_COMPILE_ENV)
    wanted = _SWITCH.get(raw.strip().lower()) if raw is not None else None
    if raw is not None and wanted is None:
        raise DeviceError(f"{JIT_COMPILE_ENV}={raw!r} is not a switch: use 0 (binary kernels) or 1 (online compile)")
    npu = getattr(module, "npu", None)
    if wanted is None:
        try:
            chosen = module._C._npu_getOption("jitCompile")  # bytes once anything set it, else None or b""
        except Exception:  # noqa: BLE001 - a torch_npu without the option API: nothing to respect
            chosen = None
        if chosen:
            jit = bytes(chosen).decode() == "enable"
            _compile_mode = CompileMode(jit, "set in this process before minilm-npu loaded (left as it is)")
            return
    jit = bool(wanted)
    source = f"{JIT_COMPILE_ENV}={raw}" if raw is not None else f"minilm-npu's default ({JIT_COMPILE_ENV}=1: online)"
    try:
        npu.set_compile_mode(jit_compile=jit)
        if not jit:
            npu.set_option({"NPU_FUZZY_COMPILE_BLACKLIST": "ReduceProd"})
    except Exception as err:  # noqa: BLE001 - e.g. ACL_OP_INIT_MODE=2 forbids it: report, keep going
        _compile_mode = CompileMode(None, f"could not be set ({type(err).__name__}: {err})")
        return
    _compile_mode = CompileMode(jit, source)


_forked_child = False
_fork_watched = False


def _mark_forked_child() -> None:
    global _forked_child
    _forked_child = True


def _watch_for_fork() -> None:
    """Mark every child forked from now on (``os.register_at_fork``), so that its NPU use fails clearly."""
    global _fork_watched
    if not _fork_watched:
        os.register_at_fork(after_in_child=_mark_forked_child)
        _fork_watched = True


def _require_unforked() -> None:
    """Refuse the NPU in a child forked from a process that had torch_npu loaded.

    Why: the NPU runtime does not survive ``fork``; torch_npu fails such a child late, with "Cannot re-initialize
    NPU in forked subprocess", or not at all when the parent's runtime state is used as it is (vllm-ascend and
    LLaMA-Factory switch their workers to ``spawn`` for this). Here the child learns it at its first NPU call.
    """
    if _forked_child:
        raise DeviceError(
            "this process was forked from one that had loaded torch_npu, and the NPU runtime does not survive a "
            "fork: start worker processes with the 'spawn' start method (multiprocessing.get_context('spawn'), "
            "as minilm_npu.devices.child_process_context() does), or use device='cpu' in this child"
        )


def child_process_context():
    """The :mod:`multiprocessing` context for every child process minilm-npu starts: ``spawn``.

    Why: a forked child cannot use an NPU its parent has touched (:func:`_require_unforked`), nor, as is well
    known, a CUDA GPU; a spawned child starts a fresh interpreter and loads the device runtime itself. Ray's
    workers are started fresh by Ray itself, never forked from the driver.
    """
    import multiprocessing

    return multiprocessing.get_context("spawn")


#: torch_npu's words when an operator has no NPU kernel and runs on the CPU (op-plugin's ``npu_cpu_fallback``).
#: The C++ warning goes to the process's stderr once per operator and process, not through Python's warnings.
CPU_FALLBACK_MESSAGE = re.compile(
    r"The operator '(?P<op>[^']+)' is not currently supported on the NPU backend and will fall back to run on the CPU"
)


@dataclass(frozen=True)
class CpuFallback:
    """An operator that ran on the CPU instead of the NPU.

    Attributes:
        op: The operator, as torch_npu names it (``aten::isin.Tensor_Tensor_out``).
        during: What was running when torch_npu reported it (e.g. ``accuracy npu:0 float16``).
        message: torch_npu's line.
    """

    op: str
    during: str
    message: str


_fallbacks: dict[str, CpuFallback] = {}


def cpu_fallbacks() -> list[CpuFallback]:
    """Every CPU fallback recorded in this process so far, in the order they were first seen.

    torch_npu reports each operator once per process, so a fallback first met in one run (``check``) is not
    reported again in the next (``accuracy``): a report lists all of them, with where each was met first.
    """
    return list(_fallbacks.values())


def record_cpu_fallbacks(device: torch.device | str, during: str) -> contextlib.AbstractContextManager[None]:
    """Record, around forward passes on ``device``, every operator torch_npu reports falling back to the CPU.

    On an NPU this reads the process's stderr (:func:`minilm_npu.native_stderr.tee_stderr`: the lines still reach
    the terminal) and Python warnings, for torch_npu's message (:data:`CPU_FALLBACK_MESSAGE`); elsewhere it does
    nothing. Found operators go to :func:`cpu_fallbacks`.
    """
    if str(device).split(":")[0] != "npu":
        return contextlib.nullcontext()
    return _recording(during)


@contextlib.contextmanager
def _recording(during: str):
    import warnings

    from .native_stderr import tee_stderr

    def note(line: str) -> None:
        match = CPU_FALLBACK_MESSAGE.search(line)
        if match and match["op"] not in _fallbacks:
            _fallbacks[match["op"]] = CpuFallback(match["op"], during, line.strip())

    show = warnings.showwarning

    def showwarning(message, *args, **kwargs):  # a torch_npu built to raise it as a Python warning
        note(str(message))
        show(message, *args, **kwargs)

    with tee_stderr(note), warnings.catch_warnings():
        warnings.showwarning = showwarning
        yield
