"""``inference.py`` / ``minilm-npu encode`` end to end, in subprocesses, as users run them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def run(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_inference_py_prints_the_dimension(model_dir, st_model):
    result = run("inference.py", "--model_path", str(model_dir), "--text", "Hello world", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "Embedding dimension: 384" in result.stdout
    # The first values, rounded to 6 decimals: within float32 noise of sentence-transformers' (1e-5, as every
    # float32 comparison here) plus the printing's rounding (5e-7). Not compared as text: "Hello world"'s first
    # value sits at a 6-decimal rounding edge (-0.0344775...), so its printed last digit follows the CPU's kernels.
    printed = re.search(r"'Hello world': \[([^\]]*)\]", result.stdout)
    assert printed, result.stdout
    values = [float(x) for x in printed.group(1).split(",")]
    np.testing.assert_allclose(values, st_model.encode("Hello world")[:5], atol=1e-5 + 5e-7, rtol=0)
    assert "Traceback" not in result.stderr


def test_batch_file_with_empty_and_crlf_lines(tmp_path, st_model):
    lines = ["first line", "", "third, after an empty one", "  ", "last"]
    path = tmp_path / "texts.txt"
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    out = tmp_path / "vectors.npy"
    result = run(
        "-m",
        "minilm_npu.cli.main",
        "encode",
        "--batch-file",
        str(path),
        "--batch_size",
        "2",
        "--device",
        "cpu",
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    vectors = np.load(out)
    assert vectors.shape == (5, 384)
    np.testing.assert_allclose(vectors, st_model.encode(lines), atol=1e-5)


def test_jsonl_output_keeps_rows_aligned(tmp_path, st_model):
    lines = ["a", "", "b"]
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "vectors.jsonl"
    result = run("inference.py", "--batch_file", str(path), "--device", "cpu", "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), st_model.encode(lines), atol=1e-5)


def test_two_cpu_workers_write_the_same_rows_and_exit_cleanly(tmp_path, st_model):
    """--device cpu,cpu: the same rows as sentence-transformers, and a clean exit (worker threads that outlived
    the call once aborted the process at exit: status 134, "terminate called without an active exception")."""
    lines = [f"line {i} " + "word " * (i % 13) for i in range(40)]
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    result = run(
        "-m",
        "minilm_npu.cli.main",
        "encode",
        "--batch-file",
        str(path),
        "--device",
        "cpu,cpu",
        "--batch-size",
        "4",
        "--output",
        str(out),
    )
    assert result.returncode == 0 and "terminate" not in result.stderr, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), st_model.encode(lines), atol=1e-5, rtol=0)


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"fine\n\xc3\x28 broken\n")
    out = tmp_path / "v.npy"
    result = run("inference.py", "--batch_file", str(path), "--device", "cpu", "--output", str(out))
    assert result.returncode == 2
    assert "line 2 is not valid UTF-8" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    replaced = run("inference.py", "--batch_file", str(path), "--device", "cpu", "--encoding-errors", "replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "Embeddings shape: (2, 384)" in replaced.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model_path", "/definitely/missing", "--text", "x"], "does not exist"),
        (["--device", "quantum", "--text", "x"], "is not a device name"),
        (["--device", "npu:3", "--text", "x"], "Available devices: cpu"),
        (["--batch_size", "0", "--text", "x"], "must be at least 1"),
        (["--text", "x", "--output", "out.parquet"], "must end in one of"),
        ([], "nothing to encode"),
    ],
)
def test_clear_errors(args, message):
    result = run("inference.py", *args)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_from_inference_import_works_from_the_repository_root():
    code = "from inference import MiniLMEncoder; e = MiniLMEncoder(device='cpu'); print(e.encode(['a', 'b']).shape)"
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
    assert "(2, 384)" in result.stdout
