"""``minilm-npu report`` on the stand-in ``npu:0`` (the CPU behind torch's PrivateUse1 device, in its own process),
with one operator made to fall back to the CPU as torch_npu reports it: every report lists it and fails."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.npu import REPO_ROOT, standin_env

pytestmark = pytest.mark.slow


def test_a_cpu_fallback_fails_every_npu_report_and_is_listed(tmp_path):
    out = tmp_path / "report"
    command = [sys.executable, "-m", "minilm_npu.cli.main", "report", "--device", "npu:0", "--out", str(out)]
    command += ["--batch-sizes", "1", "--warmup", "1", "--rounds", "1"]
    env = standin_env(TORCH_NPU_STANDIN_CPU_FALLBACK="aten::layer_norm", MINILM_NPU_JIT_COMPILE="1")
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.count("'aten::layer_norm' is not currently supported on the NPU backend") == 1  # seen, once
    reports = {name: json.loads((out / f"{name}.json").read_text()) for name in ("check", "accuracy", "bench")}
    for name, report in reports.items():
        assert [f["op"] for f in report["cpu_fallbacks"]] == ["aten::layer_norm"], name
        assert report["cpu_fallbacks"][0]["during"] == "check npu:0 float32"  # met first there, once per process
    assert reports["check"]["status"] == "FAIL" and reports["check"]["checks"][0]["status"] == "FAIL"
    assert "ran on the CPU instead of the NPU: aten::layer_norm" in reports["check"]["checks"][0]["message"]
    assert reports["accuracy"]["status"] == "FAIL" and reports["bench"]["status"] == "FAIL"
    assert reports["accuracy"]["results"][0]["status"] == "PASS"  # the numbers were right; the fallback fails it
    for page in ("index.md", "check.md", "accuracy.md", "bench.md"):
        assert "## CPU fallbacks" in (text := (out / page).read_text()) and "`aten::layer_norm`" in text, page
    jit = next(s for s in reports["check"]["ascend_settings"] if s["name"] == "jit compile")
    assert jit["value"] == "True" and jit["warning"] and "MINILM_NPU_JIT_COMPILE=1" in jit["meaning"]
    assert "check FAIL, accuracy FAIL, bench FAIL" in done.stderr
