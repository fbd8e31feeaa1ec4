"""`minilm-npu check / accuracy / bench / report` end to end, as a user runs them (subprocess, real model, CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "minilm_npu.cli.main"]


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The command line in-process (no interpreter start-up), for the long runs: exit code, stdout, stderr."""
    from minilm_npu.cli.main import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli(*args: str, env: dict[str, str] | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"


@pytest.fixture(scope="module")
def corrupted_model(tmp_path_factory, model_dir) -> Path:
    """The bundled model with one weight deliberately damaged (noise on a layer-2 query projection)."""
    import torch
    from safetensors.torch import load_file, save_file

    target = tmp_path_factory.mktemp("corrupted") / "all-MiniLM-L6-v2-damaged"
    target.mkdir()
    for item in model_dir.iterdir():
        if item.name != "model.safetensors":
            (target / item.name).symlink_to(item)
    tensors = load_file(model_dir / "model.safetensors")
    name = "encoder.layer.2.attention.self.query.weight"
    weight = tensors[name]
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std() * 3
    tensors[name] = (weight + noise).contiguous()
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_check_reports_cpu_ok_and_no_npu(tmp_path):
    # The visible-devices trap rides along: "1, 2,3" makes only card 1 visible, and the report must say so.
    done = cli("check", "--json", "--out", str(tmp_path), env={"ASCEND_RT_VISIBLE_DEVICES": "1, 2,3"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == json.loads((tmp_path / "check.json").read_text())
    assert report["kind"] == "check" and report["status"] == "ok" and report["npu_requested"] is False
    cpu = [c for c in report["checks"] if c["device"] == "cpu"]
    assert cpu and cpu[0]["status"] == "ok" and cpu[0]["min_cosine"] >= 0.999 and cpu[0]["name"]
    assert report["npu"]["count"] == 0 and report["npu"]["summary"].startswith("no NPU")
    assert {d["device"] for d in report["devices_visible"]} >= {"cpu"}
    assert report["environment"]["versions"]["torch"] and report["environment"]["versions"]["python"]
    settings = {s["name"]: s for s in report["ascend_settings"]}
    assert "precision mode" in settings and "jit compile" in settings
    visible = settings["ASCEND_RT_VISIBLE_DEVICES"]
    assert visible["warning"] is True and "parsed as cards [1] only" in visible["meaning"]
    markdown = (tmp_path / "check.md").read_text()
    assert "# Device check: OK" in markdown and "| ⚠ ASCEND_RT_VISIBLE_DEVICES |" in markdown
    assert "NPU: no NPU" in markdown
    # The CPU kernels the engine picks, from this CPU's flags (whatever CPU runs the test).
    from minilm_npu.engine.cpu_kernels import cap_summary, isa_summary, kernel_plan, onednn_isa

    expected = {"isa": isa_summary(), "onednn": onednn_isa(), "cap": cap_summary(), "kernels": kernel_plan()}
    assert report["cpu_kernels"] == expected
    assert "## CPU kernels" in markdown and f"| int8 | {kernel_plan()['int8']} |" in markdown
    # Where a call of one sentence runs is named (and was checked: the doctor encodes one sentence alone too).
    one = cpu[0]["engine"]["one sentence"]
    import importlib.util

    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        assert one.startswith("calls of one sequence on onnxruntime 1.")  # built and run: its version is known
    else:
        assert one.startswith("packed engine")
    assert "One sentence" in markdown and one.replace("|", "\\|") in markdown


@pytest.mark.parametrize(
    "cap, float32, int8", [("AVX2", "AVX2 FMA", "AVX2 (vpmaddubsw"), ("SSE41", "SSE4.1 (no FMA)", "SSE4.1 (pmaddubsw")]
)
def test_check_names_the_kernels_of_the_onednn_cap(cap, float32, int8):
    """Under ONEDNN_MAX_CPU_ISA the doctor names the kernels oneDNN runs (not the CPU's best: an AVX2 cap on an
    AMX Xeon must not say AMX) and the cap, and the engine it checks reports the same."""
    from minilm_npu.engine.cpu_kernels import cpu_flags, level_flags

    if not level_flags(cap) <= cpu_flags():
        pytest.skip(f"this CPU lacks {' '.join(sorted(level_flags(cap) - cpu_flags()))}")
    done = cli("check", "--device", "cpu", "--json", env={"ONEDNN_MAX_CPU_ISA": cap})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    kernels = report["cpu_kernels"]
    assert report["checks"][0]["engine"]["linear"] == kernels["kernels"]["float32"]
    assert kernels["onednn"] == cap and f"ONEDNN_MAX_CPU_ISA={cap}: oneDNN runs {cap}" in kernels["cap"]
    assert float32 in kernels["kernels"]["float32"] and int8 in kernels["kernels"]["int8"]
    assert "QKV in float32" in kernels["kernels"]["int8"] and "emulated" in kernels["kernels"]["bfloat16"]


def test_check_npu_fails_clearly_here():
    done = cli("check", "--device", "npu")
    assert done.returncode == 1
    assert "# Device check: FAIL" in done.stdout
    assert re.search(r"check failed: npu: device 'npu' is not available on this machine", done.stderr)
    assert "Traceback" not in done.stderr


def test_accuracy_fails_on_a_damaged_model(corrupted_model, tmp_path, capsys):
    out = tmp_path / "acc"
    code, stdout, stderr = run_main(
        capsys, "accuracy", "--device", "cpu", "--model-path", str(corrupted_model), "--json", "--out", str(out)
    )
    assert code == 1, stderr
    assert "accuracy: FAIL" in stderr and "Traceback" not in stderr
    report = json.loads(stdout)
    assert report == json.loads((out / "accuracy.json").read_text())
    assert report["status"] == "FAIL" and report["under_test"]["official_weights"] is False
    assert report["reference"]["official_weights"] is True
    (result,) = report["results"]
    assert result["metrics"]["error_rate_pct"] > 1.0
    assert {c["name"]: c["passed"] for c in result["checks"]}["error_rate_pct"] is False
    assert "**FAIL**" in (out / "accuracy.md").read_text()
    for name in ("accuracy_similarity_float32.png", "accuracy_errors_float32.png"):
        assert_png(out / name)


@pytest.mark.parametrize(
    "args, message",
    [
        (["accuracy", "--device", "cpu", "--texts", "/nonexistent/texts.txt"], "error: cannot read"),
        (["accuracy", "--device", "cpu", "--dtype", "float64"], "error: unknown dtype"),
        (["accuracy", "--device", "tpu"], "error: device 'tpu' is not a device name"),
        (["bench", "--device", "cpu", "--batch-sizes", "0,4"], "expected comma-separated positive integers"),
    ],
)
def test_bad_input_is_one_clear_line(args, message):
    done = cli(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_report_writes_everything_and_parses_back(tmp_path, capsys):
    out = tmp_path / "report"
    code, _, stderr = run_main(
        capsys, "report", "--device", "cpu", "--out", str(out), "--batch-sizes", "1,4", "--warmup", "1", "--rounds", "2"
    )
    assert code == 0, stderr
    assert f"reports in {out / 'index.md'}" in stderr
    expected = {
        "index.md",
        "check.json",
        "check.md",
        "accuracy.json",
        "accuracy.md",
        "accuracy_similarity_float32.png",
        "accuracy_errors_float32.png",
        "bench.json",
        "bench.md",
        "bench_throughput.png",
        "bench_latency.png",
    }
    assert expected <= {p.name for p in out.iterdir()}
    for png in out.glob("*.png"):
        assert_png(png)
    index = (out / "index.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", index):
        assert (out / link).is_file(), link
    check = json.loads((out / "check.json").read_text())
    assert check["status"] == "ok" and [c["device"] for c in check["checks"]] == ["cpu"]
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["status"] == "PASS" and accuracy["texts"]["count"] == 24
    env = accuracy["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["backend"] and env["date"]
    assert env["versions"]["torch"] and env["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    (acc_result,) = accuracy["results"]
    assert acc_result["metrics"]["error_rate_pct"] < 1.0 and len(acc_result["per_text_cosine"]) == 24
    bench = json.loads((out / "bench.json").read_text())
    assert bench["protocol"]["batch_sizes"] == [1, 4] and bench["protocol"]["rounds"] == 2
    (bench_result,) = bench["results"]
    assert [r["batch_size"] for r in bench_result["rows"]] == [1, 4]
    assert all(r["sentences_per_s"] > 0 and r["first_call_ms"] > 0 for r in bench_result["rows"])
    bench_md = (out / "bench.md").read_text()
    assert "| Batch size | Mean latency (ms) | p50 (ms) | p95 (ms) | First call (ms) |" in bench_md
    assert "| Error rate (%) |" in (out / "accuracy.md").read_text()
