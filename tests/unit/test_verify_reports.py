"""Plumbing of accuracy/bench/report with a fake encoder: fast, and exact about what a FAIL looks like.

The same paths run with the real model in tests/integration/test_verify_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from minilm_npu.errors import InputError
from minilm_npu.verify.accuracy import FAIL, PASS, UNSUPPORTED, AccuracySettings, Target, run_accuracy
from minilm_npu.verify.bench import BenchSettings, batch_for, run_bench
from minilm_npu.verify.report import (
    accuracy_markdown,
    bench_markdown,
    check_markdown,
    to_json,
    write_accuracy,
    write_bench,
)
from minilm_npu.verify.results import AccuracyReport, AccuracyResult, BenchReport, CheckReport, from_dict
from tests.fixtures.verify import VerifyFake as FakeEncoder

TEXTS = ["alpha", "beta gamma", "delta epsilon zeta", "eta", "theta iota kappa lambda", "mu"]


@pytest.fixture()
def weights(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not really weights")
    return path


def _run(weights, device="cpu", dtypes=("float32",), make_encoder=None):
    settings = AccuracySettings(target=Target(device=device, dtypes=dtypes), texts=TEXTS)
    return run_accuracy(settings, reference_encoder=FakeEncoder(weights), make_encoder=make_encoder)


def _bench(make_encoder, batch_sizes=(1,), warmup=1, **settings):
    return run_bench(
        BenchSettings(texts=TEXTS, batch_sizes=batch_sizes, warmup=warmup, **settings), make_encoder=make_encoder
    )


def test_accuracy_identical_passes_with_every_field(weights):
    result = _run(weights, make_encoder=lambda dtype: FakeEncoder(weights, backend="transformers"))
    report = json.loads(to_json(result.report))  # the JSON a user reads
    assert result.status == PASS and report["kind"] == "accuracy"
    (entry,) = report["results"]
    assert entry["dtype"] == "float32" and entry["status"] == PASS and entry["backend"] == "transformers"
    metrics = entry["metrics"]
    assert metrics["mean_cosine"] == pytest.approx(1.0) and metrics["error_rate_pct"] == pytest.approx(0, abs=1e-9)
    assert metrics["max_abs_error"] == 0 and metrics["determinism_max_abs"] == 0
    assert {c["name"] for c in entry["checks"]} == {
        "finite",
        "error_rate_pct",
        "min_cosine",
        "batch_invariance_min_cosine",
        "determinism_min_cosine",
    }
    assert len(entry["per_text_cosine"]) == len(TEXTS)
    assert report["texts"]["count"] == len(TEXTS) and report["texts"]["tokens_max"] == 6
    assert report["under_test"]["official_weights"] is False and report["thresholds"]["error_rate_pct"] == 1.0


def test_accuracy_noise_fails_and_names_the_check(weights):
    result = _run(weights, make_encoder=lambda dtype: FakeEncoder(weights, noise=0.5))
    assert result.status == FAIL
    failed = {c.name for c in result.report.results[0].checks if not c.passed}
    assert "error_rate_pct" in failed
    assert "float32 failed: " in accuracy_markdown(result.report)


def test_accuracy_batch_dependence_fails_invariance(weights):
    result = _run(weights, make_encoder=lambda dtype: FakeEncoder(weights, batch_noise=0.3))
    failed = {c.name for c in result.report.results[0].checks if not c.passed}
    assert "batch_invariance_min_cosine" in failed


def test_accuracy_unsupported_dtype_is_reported_not_raised(weights):
    def make(dtype):
        if dtype == "int8":
            raise InputError("int8 needs the packed backend")
        return FakeEncoder(weights)

    result = _run(weights, dtypes=("float32", "int8"), make_encoder=make)
    assert result.status == PASS
    assert result.report.results[1] == AccuracyResult(
        dtype="int8", status=UNSUPPORTED, reason="int8 needs the packed backend"
    )
    assert json.loads(to_json(result.report))["results"][1] == {
        "dtype": "int8",
        "status": UNSUPPORTED,
        "reason": "int8 needs the packed backend",
    }
    assert "int8: UNSUPPORTED — int8 needs the packed backend" in accuracy_markdown(result.report)
    only = _run(weights, dtypes=("int8",), make_encoder=make)
    assert only.status == UNSUPPORTED


def test_accuracy_rejects_bad_arguments(weights):
    with pytest.raises(InputError, match="unknown dtype"):
        _run(weights, dtypes=("float64",))
    from minilm_npu.devices import DeviceError

    with pytest.raises(DeviceError):
        _run(weights, device="npu:7")
    with pytest.raises(InputError, match="--reference-model-path"):
        _run(weights, make_encoder=lambda dtype: FakeEncoder(weights, dim=32))


def test_write_accuracy_files_and_valid_pngs(weights, tmp_path):
    result = _run(weights, make_encoder=lambda dtype: FakeEncoder(weights, noise=0.01))
    paths = write_accuracy(result, tmp_path / "out")
    names = {p.name for p in paths}
    assert names == {"accuracy.json", "accuracy.md", "accuracy_similarity_float32.png", "accuracy_errors_float32.png"}
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
                assert image.format == "PNG"
    parsed = json.loads((tmp_path / "out" / "accuracy.json").read_text())
    assert parsed["results"][0]["metrics"]["mean_cosine"] == pytest.approx(result.report.results[0].metrics.mean_cosine)
    markdown = (tmp_path / "out" / "accuracy.md").read_text()
    assert "| Error rate (%) |" in markdown and "(accuracy_similarity_float32.png)" in markdown


def test_bench_rows_and_report_files(weights, tmp_path):
    settings = BenchSettings(texts=TEXTS, batch_sizes=[1, 4, 8], warmup=1, rounds=2, compare_cpu=True)
    typed = run_bench(settings, make_encoder=lambda dtype: FakeEncoder(weights), cpu_encoder=FakeEncoder(weights))
    report = json.loads(to_json(typed))
    (result,) = report["results"]
    assert [r["batch_size"] for r in result["rows"]] == [1, 4, 8]
    for row in result["rows"]:
        assert row["mean_ms"] > 0 and row["p50_ms"] <= row["p95_ms"] <= row["max_ms"]
        assert row["sentences_per_s"] == pytest.approx(row["batch_size"] / (row["mean_ms"] / 1000))
        assert row["speedup_vs_cpu"] == pytest.approx(row["sentences_per_s"] / row["cpu_sentences_per_s"])
    # batch 8 cycles through the 6 texts: 2 + 3 + 4 + 1 + 5 + 1 words, then 2 + 3 again, plus [CLS]/[SEP]
    assert result["rows"][2]["tokens"] == sum(len(t.split()) + 2 for t in batch_for(TEXTS, 8))
    assert report["protocol"] == {
        "texts": 6,
        "batch_sizes": [1, 4, 8],
        "warmup": 1,
        "rounds": 2,
        "timing": report["protocol"]["timing"],
        "compare_cpu": True,
        "compare": None,
    }
    paths = write_bench(typed, tmp_path / "b")
    assert {p.name for p in paths} == {"bench.json", "bench.md", "bench_throughput.png", "bench_latency.png"}
    for png in (p for p in paths if p.suffix == ".png"):
        with Image.open(png) as image:
            image.verify()
    markdown = bench_markdown(typed)
    assert "| Batch size | Mean latency (ms) |" in markdown and "Speedup vs CPU" in markdown


def test_bench_rejects_bad_protocol(weights):
    make = lambda dtype: FakeEncoder(weights)  # noqa: E731
    with pytest.raises(InputError):
        _bench(make, batch_sizes=[0])
    with pytest.raises(InputError):
        _bench(make, warmup=0)
    with pytest.raises(InputError, match="--compare"):
        _bench(make, compare="infinity")


EXAMPLES = sorted(Path(__file__).resolve().parents[2].glob("docs/example-report/*/*.json"))
KINDS = {"accuracy": AccuracyReport, "bench": BenchReport, "check": CheckReport}


def _contains(new, old, where="") -> None:
    """Every key and value of ``old`` is in ``new``, in the same order (``new`` may add keys a newer version
    writes, such as the check's ``cpu_kernels``)."""
    if isinstance(old, dict):
        assert isinstance(new, dict), where
        assert [k for k in new if k in old] == list(old), where
        for key, value in old.items():
            _contains(new[key], value, f"{where}.{key}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), where
        for index, (a, b) in enumerate(zip(new, old)):
            _contains(a, b, f"{where}[{index}]")
    else:
        assert new == old, where


@pytest.mark.parametrize("path", [p for p in EXAMPLES if json.loads(p.read_text()).get("kind") in KINDS], ids=str)
def test_committed_example_reports_read_back_and_render(path):
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    report = from_dict(KINDS[data["kind"]], data)
    if data["kind"] == "check":
        _contains(json.loads(to_json(report)), data)  # older check reports lack fields written since
    else:
        assert to_json(report) == text  # the very bytes: same keys, same order, same values
    markdown = {"accuracy": accuracy_markdown, "bench": bench_markdown, "check": check_markdown}[data["kind"]](report)
    assert markdown.startswith("# ") and "| " in markdown
    if data["kind"] == "bench":
        assert f"| {report.results[0].rows[0].batch_size} |" in markdown
