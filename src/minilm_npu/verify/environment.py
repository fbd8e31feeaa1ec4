"""The environment fingerprint every report carries: versions, machine, device, date.

A number in a port report is only evidence together with what produced it, so each JSON report starts with
:func:`fingerprint`. Versions are read from package metadata, so nothing heavy (torch_npu, CANN) is imported here.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import sys
from pathlib import Path

from .results import Environment, Machine

#: Distributions whose versions change results or speed, in the order reports list them.
PACKAGES = (
    "torch",
    "torch_npu",
    "transformers",
    "tokenizers",
    "sentence-transformers",
    "numpy",
    "safetensors",
    "minilm-npu",
)

#: Where a CANN toolkit keeps its version file, relative to the toolkit's home (first match wins).
_CANN_VERSION_FILES = ("version.cfg", "compiler/version.info", "runtime/version.info")
_CANN_HOMES = ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_AICPU_PATH")
_CANN_DEFAULT_HOME = "/usr/local/Ascend/ascend-toolkit/latest"


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _parse_version_file(path: Path) -> str | None:
    """The version in a CANN ``version.cfg``/``version.info``: ``Version=8.0.RC2`` or ``..._version=[7.0.0:...]``."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() in ("version", "runtime_running_version", "toolkit_running_version"):
            value = value.strip().strip("[]").split(":")[0].strip()
            if value:
                return value
    return None


def cann_version(environ: dict[str, str] | None = None, default_home: str = _CANN_DEFAULT_HOME) -> dict | None:
    """The CANN toolkit version and the file it was read from, or None when no version file is found.

    Looks in ``$ASCEND_TOOLKIT_HOME`` (set by CANN's ``set_env.sh``), ``$ASCEND_HOME_PATH``, then the default
    install path ``/usr/local/Ascend/ascend-toolkit/latest``.
    """
    environ = os.environ if environ is None else environ
    homes = [environ[name] for name in _CANN_HOMES if environ.get(name)] + [default_home]
    for home in homes:
        for relative in _CANN_VERSION_FILES:
            path = Path(home) / relative
            if path.is_file():
                version = _parse_version_file(path)
                if version:
                    return {"version": version, "file": str(path)}
    return None


def versions() -> dict[str, str | None]:
    """Python, the packages in :data:`PACKAGES` and CANN; None for what is not installed."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        found[name] = package_version(name)
    cann = cann_version()
    found["cann"] = cann["version"] if cann else None
    return found


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def cpu_model() -> str:
    """The CPU's marketing name (Linux: /proc/cpuinfo), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_line() -> str:
    """One line for a benchmark table: the CPU's name, logical CPUs, the ISA flags the kernels care about and the
    cap (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``) the run was under, if any."""
    from ..host import cap_summary, isa_summary

    cap = cap_summary()
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs, ISA: {isa_summary()}" + (f"; capped: {cap}" if cap else "")


def describe_device(device) -> tuple[str, int | None]:
    """Human name and memory (bytes, None when unknown) of a torch device; the CPU's marketing name for ``cpu``."""
    from ..devices import describe

    info = describe(device)
    return (cpu_model() if device.type == "cpu" else info.name), info.total_memory_bytes


def machine() -> Machine:
    """OS, architecture, CPU and core count (what a CPU timing depends on)."""
    return Machine(
        os=f"{platform.system()} {platform.release()}",
        arch=platform.machine(),
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        python_executable=sys.executable,
    )


def fingerprint(
    device: str | None = None,
    dtype: str | None = None,
    backend: str | None = None,
    model: str | None = None,
    device_name: str | None = None,
    **extra: object,
) -> Environment:
    """The environment block at the top of every report.

    Args:
        device: The device under test (``"npu:0"``).
        dtype: Its dtype.
        backend: Its backend name.
        model: The model's name or directory.
        device_name: The device's human name (``"Ascend910B3"``).
        **extra: Anything else worth recording (thread count, reference model, ...).
    """
    import torch

    return Environment(
        date=now_iso(),
        device=device,
        device_name=device_name,
        dtype=dtype,
        backend=backend,
        model=model,
        torch_threads=torch.get_num_threads(),
        versions=versions(),
        machine=machine(),
        extra=dict(extra),
    )
