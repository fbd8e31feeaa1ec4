"""What trips a first run on an Ascend card, handled in the device layer: checked through the stand-in torch_npu.

* compile mode: binary kernels unless the user chose (``MINILM_NPU_JIT_COMPILE``, or a mode set before), and
  ``minilm-npu check`` says which and why;
* CPU fallbacks: torch_npu's warning, written by C++ to fd 2, is read and recorded on an NPU, and nowhere else;
* fork: a child forked after torch_npu was loaded gets a clear DeviceError, and every child process the product
  starts is spawned.
"""

from __future__ import annotations

import os
import re
import types
import warnings
from pathlib import Path

import pytest

from minilm_npu import devices
from minilm_npu.native_stderr import tee_stderr
from minilm_npu.verify.ascend import ascend_settings, cpu_fallback_setting
from tests.fixtures.npu import FALLBACK_LINE

REPO = Path(__file__).resolve().parents[2]


def _jit_line():
    return next(s for s in ascend_settings(npu_available=True, environ={}) if s.name == "jit compile")


# -- compile mode ----------------------------------------------------------------------------------------------
def test_an_npu_runs_binary_kernels_unless_told_otherwise(fake_torch_npu):
    assert devices._import_torch_npu()
    assert fake_torch_npu.compile_calls == [False]
    assert fake_torch_npu.options["NPU_FUZZY_COMPILE_BLACKLIST"] == "ReduceProd"  # as Huawei's TEI port
    mode = devices.compile_mode()
    assert mode.jit_compile is False and "minilm-npu's default" in mode.source
    line = _jit_line()  # what `minilm-npu check` shows: the mode, and who chose it
    assert line.value == "False" and "minilm-npu's default" in line.meaning and not line.warning
    devices._import_torch_npu()
    assert fake_torch_npu.compile_calls == [False]  # once per process


def test_the_environment_switch_turns_online_compile_on(fake_torch_npu, monkeypatch):
    monkeypatch.setenv(devices.JIT_COMPILE_ENV, "1")
    assert devices._import_torch_npu()
    assert fake_torch_npu.compile_calls == [True] and "NPU_FUZZY_COMPILE_BLACKLIST" not in fake_torch_npu.options
    line = _jit_line()
    assert line.value == "True" and line.warning and f"{devices.JIT_COMPILE_ENV}=1" in line.meaning


def test_a_mode_the_process_chose_before_is_left_alone(fake_torch_npu):
    fake_torch_npu.options["jitCompile"] = "enable"  # torch.npu.set_compile_mode(jit_compile=True), done earlier
    assert devices._import_torch_npu()
    assert fake_torch_npu.compile_calls == []
    assert devices.compile_mode().jit_compile is True and "before minilm-npu" in _jit_line().meaning


def test_a_bad_switch_is_a_clear_error(fake_torch_npu, monkeypatch):
    monkeypatch.setenv(devices.JIT_COMPILE_ENV, "maybe")
    with pytest.raises(devices.DeviceError, match="MINILM_NPU_JIT_COMPILE='maybe' is not a switch"):
        devices._import_torch_npu()


def test_without_torch_npu_check_says_what_the_engine_would_do(monkeypatch):
    monkeypatch.setattr(devices, "_compile_mode", None)
    line = next(s for s in ascend_settings(npu_available=False, environ={}) if s.name == "jit compile")
    assert line.value.startswith("unknown") and "jit_compile=False" in line.meaning


# -- CPU fallbacks ---------------------------------------------------------------------------------------------
def test_tee_stderr_hears_what_native_code_writes_and_passes_it_through(capfd):
    heard = []
    with tee_stderr(heard.append):
        os.write(2, b"from C, like c10's warning handler\n")
        os.write(2, b"partial ")
        os.write(2, b"line\nno newline at the end")
    assert heard == ["from C, like c10's warning handler", "partial line", "no newline at the end"]
    assert "from C, like c10's warning handler\npartial line\nno newline at the end" in capfd.readouterr().err
    os.write(2, b"after the block\n")
    assert heard[-1] == "no newline at the end" and "after the block" in capfd.readouterr().err


def test_fallbacks_are_recorded_on_an_npu_once_each_with_where_they_were_met(fake_torch_npu, capfd):
    line = FALLBACK_LINE.format(op="aten::isin.Tensor_Tensor_out")
    with devices.record_cpu_fallbacks("npu:0", "check npu:0 float32"):
        os.write(2, line.encode())  # torch_npu's C++ warning goes to fd 2, not through Python
    with pytest.warns(UserWarning, match="nonzero"), devices.record_cpu_fallbacks("npu:0", "accuracy npu:0 float16"):
        os.write(2, line.encode())
        warnings.warn(line.replace("isin.Tensor_Tensor_out", "nonzero"), UserWarning, stacklevel=1)
    found = devices.cpu_fallbacks()
    assert [(f.op, f.during) for f in found] == [
        ("aten::isin.Tensor_Tensor_out", "check npu:0 float32"),
        ("aten::nonzero", "accuracy npu:0 float16"),  # a torch_npu that raises it as a Python warning
    ]
    assert found[0].message == line.strip()
    assert capfd.readouterr().err.count("will fall back to run on the CPU") >= 2  # the user still sees them


def test_nothing_is_recorded_off_the_npu(fake_torch_npu):
    with devices.record_cpu_fallbacks("cpu", "check cpu float32"):
        os.write(2, FALLBACK_LINE.format(op="aten::isin").encode())
    assert devices.cpu_fallbacks() == []


def test_check_says_when_fallbacks_cannot_be_seen():
    assert not cpu_fallback_setting({}).warning
    assert cpu_fallback_setting({"TORCH_NPU_DISABLED_WARNING": "1"}).warning
    assert cpu_fallback_setting({"RANK_ID": "3"}).warning
    assert "error" in cpu_fallback_setting({"TORCH_NPU_FALLBACK_CPU_DISABLE": "1"}).meaning


# -- fork ------------------------------------------------------------------------------------------------------
def _in_a_forked_child(action) -> str:
    """Run ``action`` in a child made by os.fork; the child's report: "ok" or the DeviceError's message."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, touching nothing of pytest's
        try:
            action()
            report = "ok"
        except devices.DeviceError as err:
            report = str(err)
        except BaseException as err:  # noqa: BLE001
            report = f"unexpected {type(err).__name__}: {err}"
        os.write(write_end, report.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(pid, 0)
    return report


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_after_torch_npu_gets_a_clear_error(fake_torch_npu):
    with warnings.catch_warnings():  # a threaded parent: Python warns about fork itself, which is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        assert _in_a_forked_child(lambda: devices.device_count("cpu")) == "ok"  # before torch_npu: nothing to say
        devices._import_torch_npu()
        npu_device = types.SimpleNamespace(type="npu")  # what a model loaded before the fork holds
        for action in (
            lambda: devices.parse_devices("npu:0"),
            lambda: devices.device_module("npu"),
            lambda: devices.to_device([None], npu_device),
        ):
            report = _in_a_forked_child(action)
            assert "does not survive a fork" in report and "'spawn'" in report, report
        assert _in_a_forked_child(lambda: devices.parse_devices("cpu")) == "ok"  # the CPU is still fine
    assert not devices._forked_child  # the parent itself is untouched


def test_every_child_process_the_product_starts_is_spawned():
    assert devices.child_process_context().get_start_method() == "spawn"
    starts = re.compile(r"os\.fork\(|get_context\(|multiprocessing\.(Process|Pool)\(|set_start_method\(|fork_exec")
    offenders = []
    for path in sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "benchmarks").rglob("*.py")):
        if path.name == "devices.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if starts.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "start child processes through devices.child_process_context():\n" + "\n".join(offenders)
