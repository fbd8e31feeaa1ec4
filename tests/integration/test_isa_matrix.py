"""The instruction-set-dependent tests (marker ``isa``) again, under every older CPU class this CPU can reach.

oneDNN's ``ONEDNN_MAX_CPU_ISA``, ATen's ``ATEN_CPU_CAPABILITY`` and MKL's ``MKL_ENABLE_INSTRUCTIONS`` make one CPU
run the kernels of an older one, so the float32 exactness against sentence-transformers, the int8 and bfloat16
quality bounds, the kernel plan and the fused quantization are checked for the AVX2 Zen 3, the AVX-512 Zen 4 and
the AMX Xeon on whichever of them runs the suite (as far as its own flags reach). One subprocess per class (the
model is loaded once in it); its output is shown when it fails. A class the CPU cannot reach is skipped with the
flags it lacks; the class the suite itself ran on is skipped as already covered.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from minilm_npu.engine.cpu_kernels import (
    ATEN_CAPABILITIES,
    aten_capability,
    cpu_flags,
    level_flags,
    onednn_cap,
    onednn_isa,
    onednn_levels,
)
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

#: CPU class -> (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, the CPUs it stands for).
CPU_CLASSES = {
    "sse41": ("SSE41", "default", "SSE4_2", "x86-64-v2 without AVX (some VMs, old Atoms)"),
    "avx2": ("AVX2", "avx2", "AVX2", "Haswell to Zen 3"),
    "avx2-vnni": ("AVX2_VNNI", "avx2", "AVX2", "Alder Lake and later client cores"),
    "avx512": ("AVX512_CORE", "avx512", "AVX512", "Skylake-SP"),
    "avx512-vnni": ("AVX512_CORE_VNNI", "avx512", "AVX512", "Cascade Lake, Ice Lake"),
    "avx512-bf16": ("AVX512_CORE_BF16", "avx512", "AVX512", "Cooper Lake, Zen 4"),
    "amx": ("AVX512_CORE_AMX", "avx512", "AVX512", "Sapphire Rapids and later Xeons"),
}
CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def isa_test_files() -> list[str]:
    """The test modules that hold ``isa``-marked tests (found by the marker, so new ones join by themselves)."""
    found = []
    for path in sorted((REPO_ROOT / "tests").rglob("test_*.py")):
        if path.name != "test_isa_matrix.py" and "pytest.mark.isa" in path.read_text(encoding="utf-8"):
            found.append(str(path.relative_to(REPO_ROOT)))
    return found


def unreachable_reason(onednn: str, aten: str) -> str | None:
    """Why this CPU cannot run a class's kernels (the flags it lacks), or None when it can."""
    flags = cpu_flags()
    missing = sorted((level_flags(onednn) | set(ATEN_CAPABILITIES[aten])) - flags)
    return f"this CPU lacks {' '.join(missing)}" if missing else None


def test_every_class_is_a_known_cap():
    assert isa_test_files(), "no test is marked isa"
    for onednn, aten, _mkl, _cpus in CPU_CLASSES.values():
        assert onednn_cap({"ONEDNN_MAX_CPU_ISA": onednn}) == onednn and aten in ATEN_CAPABILITIES


@pytest.mark.parametrize("name", list(CPU_CLASSES))
def test_isa_dependent_tests_pass_under_the_cap(name):
    onednn, aten, mkl, cpus = CPU_CLASSES[name]
    reason = unreachable_reason(onednn, aten)
    if reason:
        pytest.skip(f"{name} ({cpus}): {reason}")
    if onednn_levels(cap=onednn) == onednn_levels() and aten == aten_capability():
        pytest.skip(f"{name} ({cpus}) is what this process runs ({onednn_isa()}, ATen {aten}): the suite covered it")
    # A fresh pytest: none of this worker's pytest/xdist variables, and the class's caps in place of any in force.
    env = {k: v for k, v in os.environ.items() if k not in CAP_VARIABLES and not k.startswith("PYTEST_")}
    env.update(ONEDNN_MAX_CPU_ISA=onednn, ATEN_CPU_CAPABILITY=aten, MKL_ENABLE_INSTRUCTIONS=mkl)
    # Inductor's cache does not key on ATEN_CPU_CAPABILITY: code generated for this CPU's own capability would be
    # reused under the cap (and fail to compile: the fused quantization would quietly run eager). One per class.
    env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / f"minilm-npu-inductor-{name}")
    command = [sys.executable, "-m", "pytest", "-m", "isa", "-p", "no:xdist", "-p", "no:cacheprovider", "-q"]
    run = subprocess.run(
        command + isa_test_files(),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{name}: {' '.join(command)} exited {run.returncode}\n{output[-12000:]}"
    assert " passed" in output.splitlines()[-1], output[-2000:]
