"""The one-sentence path of the CPU engine: one sequence's transformer forward on ONNX Runtime or OpenVINO.

Why: a query (one short sentence) is bound by streaming the weights and by per-operator overheads, not by FLOPs. The
packed engine pays a Python call and a torch dispatch per operator; ONNX Runtime and OpenVINO run a whole graph per
call with weights prepacked for their own GEMMs. So calls of one sequence go to a :class:`QueryEngine` when one of
them is installed and the dtype has a graph that keeps the packed engine's quality bound; every larger call stays
on the packed engine, which wins batches by packing them (no padding).

* The graph is built from the same checked safetensors the packed engine loads (:mod:`.onnx_graph`), with the
  model's config, and cached on disk under the user cache (``MINILM_NPU_CACHE``, else ``$XDG_CACHE_HOME`` or
  ``~/.cache``, then ``minilm-npu/query/``), keyed by the weights' sha256, the graph's version and its variant; a
  cache miss is logged when it is built. Nothing is built or loaded until the first query (or ``warmup``), so
  batch-only users never pay for it.
* Only the transformer runs there: token ids and the positions the packed engine computed in, hidden states out;
  pooling and everything after it stay the packed engine's.
* Threads: like the packed engine's forwards (:class:`~.cpu_execution.AdaptiveThreads`), each call runs on one
  thread or all, whichever measures faster under the load; a runtime session is made per thread count on first
  use, with its thread pool's spinning off so that it never takes cores from torch's pool between calls.
* Choice (:func:`plan_query`): float32 on ONNX Runtime, else OpenVINO; bfloat16 on OpenVINO with its bfloat16
  inference precision where the CPU has bfloat16 hardware; int8 on the float32 graph too (exact, and faster for
  one sentence than the int8 kernels; see docs/engine.md).
  ``MINILM_NPU_QUERY_ENGINE`` = ``off`` | ``onnxruntime`` | ``openvino`` overrides it. A runtime that fails to
  build or load is logged once and every call goes back to the packed engine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..modelfiles import cache_dir, sha256_of
from .checkpoint import BertConfig, load_weights
from .onnx_graph import transformer_graph

log = logging.getLogger(__name__)

#: Environment variable that overrides the choice: ``off`` (or ``0``), ``onnxruntime``, ``openvino``.
QUERY_ENV = "MINILM_NPU_QUERY_ENGINE"
RUNTIMES = ("onnxruntime", "openvino")
#: Bumped whenever :mod:`.onnx_graph` changes the graph it builds, so older cached files are not reused.
GRAPH_VERSION = 1
_SHA256 = re.compile("[0-9a-f]{64}")


@dataclass(frozen=True)
class QueryPlan:
    """Which runtime runs one-sequence calls, in which precision, and why (``minilm-npu check`` prints it)."""

    runtime: str | None
    precision: str = "float32"
    reason: str = ""


def installed_runtimes() -> tuple[str, ...]:
    """The runtimes of :data:`RUNTIMES` importable here (without importing them)."""
    return tuple(name for name in RUNTIMES if importlib.util.find_spec(name) is not None)


def plan_query(dtype: str, native_bfloat16: bool, installed: tuple[str, ...], setting: str | None = None) -> QueryPlan:
    """Pick the one-sequence runtime for a CPU engine of ``dtype``.

    Args:
        dtype: The packed engine's dtype.
        native_bfloat16: Whether the CPU has bfloat16 hardware (AVX512-BF16 or AMX) within its ISA cap.
        installed: The runtimes installed (:func:`installed_runtimes`).
        setting: :data:`QUERY_ENV`'s value (None or ``auto``: choose).
    """
    setting = (setting or "auto").strip().lower()
    if setting in ("off", "0", "none", "false", "packed"):
        return QueryPlan(None, reason=f"{QUERY_ENV}={setting}: every call on the packed engine")
    wanted = RUNTIMES if setting == "auto" else (setting,)
    if setting not in ("auto",) + RUNTIMES:
        return QueryPlan(None, reason=f"{QUERY_ENV}={setting!r} is not off, auto, onnxruntime or openvino: ignored")
    usable = [name for name in wanted if name in installed]
    if dtype in ("float32", "int8"):
        if not usable:
            return QueryPlan(None, reason=f"{' or '.join(wanted)} not installed (pip install 'minilm-npu[cpu-query]')")
        if dtype == "int8":
            # One sentence is a few rows per GEMM: the packed engine's int8 kernels pay per call (quantize, int8
            # GEMM, rescale as separate ops) more than they save, and no int8 graph of a runtime keeps the int8
            # bound on every CPU (u8 x s8 products saturate without VNNI). The float32 graph is exact and faster.
            return QueryPlan(
                usable[0],
                "float32",
                "float32 graph of the same weights: exact, and faster for one sentence than the int8 kernels",
            )
        return QueryPlan(usable[0], "float32", "exact float32 graph of the same weights")
    if dtype == "bfloat16":
        if not native_bfloat16:
            return QueryPlan(None, reason="no bfloat16 hardware (AVX512-BF16/AMX) on this CPU")
        if "openvino" not in usable:
            return QueryPlan(None, reason="bfloat16 queries run on OpenVINO, which is not installed")
        return QueryPlan("openvino", "bfloat16", "OpenVINO with bfloat16 inference precision")
    return QueryPlan(None, reason=f"no {dtype} graph: the packed engine's kernels keep its quality bound")


# -- the cache -------------------------------------------------------------------------------------------------


def weights_digest(path: Path) -> str:
    """The sha256 of a weights file, remembered per (path, size, mtime) under the cache so loads stay fast."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    marker = cache_dir() / "digests" / key
    try:
        remembered = marker.read_text().strip()
    except OSError:
        remembered = ""
    if _SHA256.fullmatch(remembered):  # anything else (a foreign or damaged file) is hashed again
        return remembered
    digest = sha256_of(path)
    try:
        _write_atomically(marker, digest.encode())
    except OSError:
        pass  # a read-only cache only costs hashing again next time
    return digest


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a name of this process and thread, then rename: readers in other processes see the whole file or
    none, and a killed writer leaves only a ``.partial`` behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def config_tag(config: BertConfig) -> str:
    """A short digest of the architecture numbers the graph is built from: the same weights file under another
    ``config.json`` (another epsilon or head count) gets another graph."""
    return hashlib.sha256(repr(config).encode()).hexdigest()[:12]


def cached_graph(weights_path: Path, variant: str, build: Callable[[], bytes]) -> Path:
    """The graph file of ``variant`` for these weights: from the cache, or built once with ``build`` and stored
    (written to a temporary name and renamed, so a concurrent or killed build never leaves a torn file)."""
    name = f"{weights_digest(weights_path)[:32]}-v{GRAPH_VERSION}-{variant}.onnx"
    path = cache_dir() / "query" / name
    if path.is_file():
        return path
    log.info("building the one-sentence %s graph of %s (once per weights): %s", variant, weights_path, path)
    _write_atomically(path, build())
    return path


# -- the runtimes ----------------------------------------------------------------------------------------------


class _OnnxRuntime:
    """One ONNX Runtime session per thread count over one graph file."""

    def __init__(self, path: Path):
        import onnxruntime

        self._ort, self._path = onnxruntime, path
        self.version = onnxruntime.__version__

    def session(self, threads: int):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads must not spin: torch's own pool (and the other lanes) run on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = self._ort.InferenceSession(str(self._path), options, providers=["CPUExecutionProvider"])

        def run(ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
            return session.run(None, {"input_ids": ids, "position_ids": positions})[0]

        return run


class _OpenVino:
    """One OpenVINO compiled model per thread count over one graph file; an infer request per calling thread."""

    def __init__(self, path: Path, precision: str):
        import openvino

        self._core, self._path, self._precision = openvino.Core(), path, precision
        self.version = openvino.__version__

    def session(self, threads: int):
        compiled = self._core.compile_model(
            str(self._path),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "NUM_STREAMS": 1,
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "bf16" if self._precision == "bfloat16" else "f32",
            },
        )
        local = threading.local()

        def run(ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
            request = getattr(local, "request", None)
            if request is None:
                request = local.request = compiled.create_infer_request()
            request.infer({"input_ids": ids, "position_ids": positions})
            return request.get_output_tensor(0).data.copy()  # the request reuses its output buffer

        return run


class QueryEngine:
    """One-sequence forwards of one model on the runtime :func:`plan_query` picked; built on first use.

    Args:
        weights_path: The checked safetensors the packed engine loaded.
        config: The architecture.
        plan: The runtime and precision (``plan.runtime`` must not be None).
    """

    def __init__(self, weights_path: Path, config: BertConfig, plan: QueryPlan):
        if plan.runtime is None:
            raise ValueError("a QueryEngine needs a runtime")
        self.weights_path, self.config, self.plan = Path(weights_path), config, plan
        self.failed: str | None = None
        self._runtime = None
        self._runs: dict[int, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {}
        self._lock = threading.Lock()

    def _graph(self) -> bytes:
        return transformer_graph(self.config, load_weights(self.weights_path, self.config)).SerializeToString()

    def _run_for(self, threads: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        run = self._runs.get(threads)
        if run is not None or self.failed:
            return run
        with self._lock:  # lanes call from several threads: one session per count, built once
            if threads not in self._runs and not self.failed:
                try:
                    if self._runtime is None:
                        path = cached_graph(self.weights_path, f"float32-{config_tag(self.config)}", self._graph)
                        self._runtime = (
                            _OnnxRuntime(path)
                            if self.plan.runtime == "onnxruntime"
                            else _OpenVino(path, self.plan.precision)
                        )
                    log.debug("one-sentence path: %s session on %d thread(s)", self.plan.runtime, threads)
                    self._runs[threads] = self._runtime.session(threads)
                except Exception as err:  # noqa: BLE001 - a broken runtime install: the packed engine remains
                    self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    log.warning(
                        "one-sentence path on %s unavailable (%s); using the packed engine",
                        self.plan.runtime,
                        self.failed,
                    )
            return self._runs.get(threads)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """Hidden states ``[tokens, hidden]`` float32 of one sequence, on the calling thread's torch thread count;
        None where the runtime is unavailable (the caller runs the packed engine)."""
        run = self._run_for(torch.get_num_threads())
        if run is None:
            return None
        return torch.from_numpy(run(ids.numpy(), positions.numpy()))

    def describe(self) -> str:
        """One line for the engine's reported choices."""
        if self.failed:
            return f"packed engine ({self.plan.runtime} failed: {self.failed})"
        version = f" {self._runtime.version}" if self._runtime is not None else ""
        return (
            f"calls of one sequence on {self.plan.runtime}{version} ({self.plan.precision}, {self.plan.reason}); "
            "larger calls on the packed engine"
        )
