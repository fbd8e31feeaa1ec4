"""The device doctor: what this machine offers, how it is set up, and whether each device really encodes right.

For every requested device (default: every device torch sees) it loads the model with the default engine, encodes
a few probe texts — short, Chinese, and one past tokenizer.json's 128-token trap — and compares them with the CPU
float32 reference. A device passes when that works and the minimum cosine reaches :data:`PASS_MIN_COSINE`; an NPU
also needs every operator of the forward on the card (no CPU fallback, :func:`minilm_npu.devices.cpu_fallbacks`).

Without an NPU the report says so plainly; that is only a failure when an NPU was asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..config import DEFAULT_BACKEND
from ..contract import Encoder
from .accuracy import builtin_texts, row_cosines
from .results import FAIL, OK, CheckReport, CpuKernels, DeviceCheck, NpuSummary, VisibleDevice
from .settings import REFERENCE_BACKEND, build_encoder

__all__ = ["FAIL", "OK", "PASS_MIN_COSINE", "CheckReport", "DeviceCheck", "check_device", "run_doctor"]

#: A device passes when every probe text's cosine with the CPU reference reaches this (fp16 matmuls give ~0.9999).
PASS_MIN_COSINE = 0.999


def probe_texts() -> list[str]:
    """A few texts that exercise short inputs, another script and the 129–256-token range."""
    texts = builtin_texts()
    longest = max(texts, key=len)
    picks = [texts[0], longest] + [t for t in texts if any("\u4e00" <= ch <= "\u9fff" for ch in t)][:1]
    return list(dict.fromkeys(picks))


def _requested(spec: str | None) -> tuple[list[str], bool]:
    """Devices to check and whether an NPU was explicitly asked for."""
    from ..devices import DeviceError, available_devices, split_devices

    if spec is None or spec.strip().lower() in ("", "all"):
        return available_devices(), False
    try:
        parts = split_devices(spec)
    except DeviceError:  # reported as that entry's failed check, beside the others
        parts = [spec]
    return parts, any(p.startswith("npu") for p in parts)


def check_device(
    spec: str,
    reference: Callable[[], np.ndarray],
    texts: list[str],
    dtype: str = "float32",
    backend: str | None = None,
    model_path: str | None = None,
) -> list[DeviceCheck]:
    """Load the model on ``spec`` (``"npu"`` means every card), encode ``texts`` and compare with the reference.

    ``reference`` is called only once a device is known to exist, so asking for an absent NPU answers at once.
    """
    from ..devices import DeviceError, cpu_fallbacks, parse_devices, record_cpu_fallbacks
    from .environment import describe_device

    try:
        devices = parse_devices(spec)
    except DeviceError as err:
        return [DeviceCheck(spec, FAIL, message=str(err))]
    checks = []
    for device in devices:
        check = DeviceCheck(str(device), FAIL)
        try:
            check.name, check.total_memory_bytes = describe_device(device)
            start = time.perf_counter()
            with record_cpu_fallbacks(device, f"check {device} {dtype}"):
                encoder = build_encoder(model_path, str(device), dtype, backend)
                vectors = encoder.encode(texts, batch_size=len(texts))
            check.first_encode_s = time.perf_counter() - start
            # A call of one sentence may run on another path than a batch (the CPU engine's one-sentence path):
            # checked too, as its own row against the first reference row.
            vectors = np.concatenate([vectors, encoder.encode(texts[:1], batch_size=1)])
            check.engine = encoder.engine_choices()
        except Exception as err:  # noqa: BLE001 - any failure on a device is the finding, reported in one line
            check.message = f"{type(err).__name__}: {err}"
            checks.append(check)
            continue
        expected = reference()
        expected = np.concatenate([expected, expected[:1]])
        cosines = row_cosines(expected, vectors)
        check.min_cosine = float(cosines.min()) if np.isfinite(cosines).all() else float("nan")
        check.max_abs_error = float(np.abs(vectors - expected).max())
        fallen = [f.op for f in cpu_fallbacks()] if device.type == "npu" else []
        if fallen:
            check.message = f"{len(fallen)} operator(s) ran on the CPU instead of the NPU: {', '.join(fallen)}"
        elif check.min_cosine >= PASS_MIN_COSINE:
            check.status = OK
            check.message = (
                f"{encoder.config.backend}/{dtype} matches the CPU reference (min cosine {check.min_cosine:.6f})"
            )
        else:
            check.message = (
                f"{encoder.config.backend}/{dtype} differs from the CPU reference: min cosine "
                f"{check.min_cosine:.6f} < {PASS_MIN_COSINE}"
            )
        checks.append(check)
    return checks


def _npu_summary() -> NpuSummary:
    import importlib.util

    from ..devices import device_count

    installed = importlib.util.find_spec("torch_npu") is not None
    count = device_count("npu") if installed else 0
    if not installed:
        text = "no NPU: torch_npu is not installed (pip install torch_npu matching your torch and CANN)"
    elif count == 0:
        text = (
            "no NPU: torch_npu is installed but sees no card (check the driver, CANN's set_env.sh, "
            "ASCEND_RT_VISIBLE_DEVICES)"
        )
    else:
        text = f"{count} NPU(s) visible"
    return NpuSummary(torch_npu_installed=installed, count=count, summary=text)


def run_doctor(
    device: str | None = None,
    dtype: str = "float32",
    backend: str | None = None,
    model_path: str | None = None,
    reference_encoder: Encoder | None = None,
) -> CheckReport:
    """Check the machine and the requested devices (default: all of them).

    Args:
        device: ``"npu"``, ``"cuda:0"``, ``"cpu,npu:1"``... or None / ``"all"`` for every device torch sees.
        dtype: dtype to encode with on each device.
        backend: Backend to check (None: the default engine).
        model_path: Model directory (None: the bundled official model).
        reference_encoder: A ready CPU float32 reference encoder (saves a model load).

    Returns:
        The report; its ``status`` is ``"ok"`` only when every requested device passed.
    """
    from ..devices import available_devices, cpu_fallbacks, parse_devices
    from ..host import cap_summary, isa_summary, kernel_plan, onednn_isa
    from ..modelfiles import DEFAULT_MODEL_ID
    from .ascend import ascend_settings
    from .environment import cann_version, describe_device, fingerprint

    requested, npu_asked = _requested(device)
    npu = _npu_summary()
    texts = probe_texts()
    cache: dict[str, object] = {}

    def reference() -> np.ndarray:
        if "vectors" not in cache:
            encoder = reference_encoder or build_encoder(model_path, "cpu", "float32", REFERENCE_BACKEND)
            cache["vectors"] = encoder.encode(texts, batch_size=len(texts))
        return cache["vectors"]

    checks: list[DeviceCheck] = []
    for spec in requested:
        checks += check_device(spec, reference, texts, dtype, backend, model_path)
    all_visible = []
    for name in available_devices():
        device_name, memory = describe_device(parse_devices(name)[0])
        all_visible.append(VisibleDevice(device=name, name=device_name, total_memory_bytes=memory))
    # The first card's name tells the chip generation, hence the default precision mode.
    chip = next((v.name for v in all_visible if v.device.startswith("npu")), None)
    status = OK if checks and all(c.status == OK for c in checks) else FAIL
    return CheckReport(
        status=status,
        requested=requested,
        npu_requested=npu_asked,
        environment=fingerprint(
            device=",".join(requested),
            dtype=dtype,
            backend=backend or DEFAULT_BACKEND,
            model=model_path or DEFAULT_MODEL_ID,
            cann=cann_version(),
            device_name=", ".join(sorted({c.name for c in checks if c.name})) or None,
        ),
        devices_visible=all_visible,
        npu=npu,
        ascend_settings=ascend_settings(npu.count > 0, chip),
        cpu_kernels=CpuKernels(isa=isa_summary(), kernels=kernel_plan(), onednn=onednn_isa(), cap=cap_summary()),
        checks=checks,
        probe_texts=len(texts),
        pass_min_cosine=PASS_MIN_COSINE,
        cpu_fallbacks=cpu_fallbacks() if any(c.device.startswith("npu") for c in checks) else None,
    )
