"""What ``check``, ``accuracy`` and ``bench`` find, as typed results, and their one JSON form.

The protocols return these dataclasses; :mod:`.report` renders them as Markdown and plots, and :func:`to_dict` /
:func:`from_dict` are the only bridge to JSON: a report's JSON keys are the field names here, in field order, and
a key whose value is absent is left out (``omit`` below), so a report written before a field existed still reads.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..devices import CpuFallback
from .ascend import Setting
from .settings import Thresholds

PASS, FAIL, UNSUPPORTED = "PASS", "FAIL", "UNSUPPORTED"
#: What the doctor calls a device that passed, and the benchmark a run that ran (FAIL is shared).
OK = "ok"

T = TypeVar("T")


def omit() -> Any:
    """A field that is None unless measured, and then absent from the JSON (not ``null``)."""
    return field(default=None, metadata={"omit_none": True})


# -- the environment every report carries ----------------------------------------------------------------------
@dataclass
class Machine:
    """OS, architecture, CPU and core count (what a CPU timing depends on)."""

    os: str
    arch: str
    cpu: str
    cpu_count: int | None
    python_executable: str


@dataclass
class Environment:
    """The block at the top of every report: what produced its numbers.

    Attributes:
        extra: Anything else recorded beside the fixed fields (``device_memory_bytes`` in bench reports, ``cann``
            in check reports), written after them at the same level.
    """

    date: str
    device: str | None
    device_name: str | None
    dtype: str | None
    backend: str | None
    model: str | None
    torch_threads: int
    versions: dict[str, str | None]
    machine: Machine
    extra: dict[str, Any] = field(default_factory=dict, metadata={"flatten": True})


# -- accuracy ---------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """One PASS/FAIL line: ``value rule limit``."""

    name: str
    value: float | bool
    limit: float | bool
    rule: str
    passed: bool


@dataclass
class Metrics:
    """The side under test against the reference (first seven), and against itself; STS only with a file."""

    mean_cosine: float
    min_cosine: float
    error_rate_pct: float
    max_abs_error: float
    mse: float
    similarity_pearson_r: float
    similarity_max_abs_error: float
    finite: bool
    batch_invariance_min_cosine: float
    batch_invariance_max_abs: float
    determinism_min_cosine: float
    determinism_max_abs: float
    encode_seconds: float
    sts_spearman: float | None = omit()
    sts_spearman_reference: float | None = omit()
    sts_spearman_drop: float | None = omit()


@dataclass
class AccuracyResult:
    """One dtype: its verdict with the metrics and checks behind it, or UNSUPPORTED with the ``reason``."""

    dtype: str
    backend: str | None = omit()
    status: str = UNSUPPORTED
    reason: str | None = omit()
    metrics: Metrics | None = omit()
    checks: list[Check] | None = omit()
    per_text_cosine: list[float] | None = omit()


@dataclass
class UnderTest:
    """The side under test; which weights it ran once any dtype ran."""

    device: str
    device_name: str | None
    backend: str
    model: str | None = omit()
    directory: str | None = omit()
    weights_sha256: str | None = omit()
    official_weights: bool | None = omit()


@dataclass
class ReferenceSide:
    """The CPU float32 reference and its weights."""

    device: str
    dtype: str
    backend: str
    model: str
    directory: str
    weights_sha256: str
    official_weights: bool


@dataclass
class TextsInfo:
    """The compared texts: how many, from where, and their token lengths."""

    count: int
    builtin: int
    user: int
    tokens_min: int
    tokens_max: int
    tokens_mean: float
    over_128_tokens: int
    truncated_at_max_seq_length: int


@dataclass
class StsInfo:
    """The STS file both sides were scored on."""

    file: str
    pairs: int
    spearman_reference: float


@dataclass
class AccuracyReport:
    """The accuracy protocol's report (``accuracy.json``).

    Attributes:
        cpu_fallbacks: On an NPU, every operator torch_npu ran on the CPU (:func:`minilm_npu.devices.cpu_fallbacks`;
            any fails the report); absent on other devices.
    """

    status: str
    environment: Environment
    under_test: UnderTest
    reference: ReferenceSide
    texts: TextsInfo
    sts: StsInfo | None
    thresholds: Thresholds
    results: list[AccuracyResult]
    cpu_fallbacks: list[CpuFallback] | None = omit()
    kind: str = field(default="accuracy", metadata={"first": True})

    def ran(self) -> list[AccuracyResult]:
        """The dtypes that ran (not UNSUPPORTED), in order."""
        return [r for r in self.results if r.metrics is not None]


# -- bench ------------------------------------------------------------------------------------------------------
@dataclass
class BenchRow:
    """One batch size: latency statistics and throughput; the peers' columns where they were timed."""

    batch_size: int
    tokens: int
    first_call_ms: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    min_ms: float
    max_ms: float
    sentences_per_s: float
    tokens_per_s: float
    st_sentences_per_s: float | None = omit()
    st_mean_ms: float | None = omit()
    ratio_vs_st: float | None = omit()
    cpu_sentences_per_s: float | None = omit()
    speedup_vs_cpu: float | None = omit()


@dataclass
class BenchResult:
    """One dtype: its rows (status ``ok``), or UNSUPPORTED with the ``reason``."""

    dtype: str
    status: str = UNSUPPORTED
    reason: str | None = omit()
    backend: str | None = omit()
    load_s: float | None = omit()
    rows: list[BenchRow] | None = omit()
    st_dtype: str | None = omit()


@dataclass
class BenchProtocol:
    """How the timings were taken."""

    texts: int
    batch_sizes: list[int]
    warmup: int
    rounds: int
    timing: str
    compare_cpu: bool
    compare: str | None


@dataclass
class CpuRun:
    """The CPU float32 baseline's rows (``--compare-cpu``)."""

    dtype: str
    backend: str
    rows: list[BenchRow]


@dataclass
class BenchReport:
    """The performance protocol's report (``bench.json``); ``cpu_fallbacks`` as in :class:`AccuracyReport`."""

    status: str
    environment: Environment
    protocol: BenchProtocol
    results: list[BenchResult]
    cpu: CpuRun | None
    cpu_fallbacks: list[CpuFallback] | None = omit()
    kind: str = field(default="bench", metadata={"first": True})

    def ran(self) -> list[BenchResult]:
        """The dtypes that were timed, in order."""
        return [r for r in self.results if r.rows is not None]


# -- check (the doctor) -----------------------------------------------------------------------------------------
@dataclass
class DeviceCheck:
    """One device's line in the doctor's report."""

    device: str
    status: str
    name: str | None = None
    total_memory_bytes: int | None = None
    min_cosine: float | None = None
    max_abs_error: float | None = None
    first_encode_s: float | None = None
    message: str = ""
    engine: dict[str, str] = field(default_factory=dict)  # what the engine picked on this device, and why


@dataclass
class VisibleDevice:
    """A device torch sees, with its name and memory."""

    device: str
    name: str | None
    total_memory_bytes: int | None


@dataclass
class NpuSummary:
    """Whether torch_npu is installed and how many cards it sees, in one sentence too."""

    torch_npu_installed: bool
    count: int
    summary: str


@dataclass
class CpuKernels:
    """The CPU's ISA flags that matter, and the linear-layer kernel the packed engine picks per CPU dtype; the
    instruction set oneDNN runs, and the cap (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``) in force, if any."""

    isa: str
    kernels: dict[str, str]
    onednn: str = ""
    cap: str | None = None


@dataclass
class CheckReport:
    """The doctor's report (``check.json``); ``cpu_fallbacks`` as in :class:`AccuracyReport`."""

    status: str
    requested: list[str]
    npu_requested: bool
    environment: Environment
    devices_visible: list[VisibleDevice]
    npu: NpuSummary
    ascend_settings: list[Setting]
    checks: list[DeviceCheck]
    probe_texts: int
    pass_min_cosine: float
    cpu_kernels: CpuKernels | None = field(default=None, metadata={"omit_none": True, "before": "checks"})
    cpu_fallbacks: list[CpuFallback] | None = omit()
    kind: str = field(default="check", metadata={"first": True})


@dataclass
class ReportSet:
    """What ``minilm-npu report`` wrote: the three reports and the index linking them."""

    check: CheckReport
    accuracy: AccuracyReport
    bench: BenchReport
    index: Path


# -- the JSON bridge --------------------------------------------------------------------------------------------
def _order(cls: type) -> list[dataclasses.Field]:
    """Fields in JSON order: ``first`` ones first, a ``before`` one ahead of the field it names."""
    ordered = [f for f in dataclasses.fields(cls) if not f.metadata.get("first")]
    for f in [f for f in ordered if f.metadata.get("before")]:
        ordered.remove(f)
        ordered.insert([g.name for g in ordered].index(f.metadata["before"]), f)
    return [f for f in dataclasses.fields(cls) if f.metadata.get("first")] + ordered


def to_dict(obj: Any) -> Any:
    """A result (or a list or dict of them) as plain JSON-ready data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in _order(type(obj)):
            value = getattr(obj, f.name)
            if f.metadata.get("flatten"):
                out.update(to_dict(value))
            elif not (value is None and f.metadata.get("omit_none")):
                out[f.name] = to_dict(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """A result of type ``cls`` from its JSON form (keys it does not know go to a ``flatten`` field, or are
    ignored)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.metadata.get("flatten"):
            kwargs[f.name] = {k: v for k, v in data.items() if k not in known}
        elif f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name])
    return cls(**kwargs)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        classes = [a for a in options if dataclasses.is_dataclass(a)]
        if len(options) == 1:
            return _convert(options[0], value)
        return from_dict(classes[0], value) if classes and isinstance(value, dict) else value  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_convert(item, v) for v in value]
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)  # type: ignore[arg-type]
    return value
