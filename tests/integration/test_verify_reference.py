"""``minilm-npu accuracy / report --model-path DIR`` against sentence-transformers itself as the reference:
``SentenceTransformer(DIR, device="cpu")`` in float32 on the same directory (random-weight fixture models saved by
sentence-transformers), and a reference of another model that must FAIL."""

from __future__ import annotations

import json

import pytest
import sentence_transformers

pytestmark = pytest.mark.slow


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The command line in-process: exit code, stdout, stderr."""
    from minilm_npu.cli.main import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "name",
    [
        "bert-mean-raw",  # no Normalize: the reference's vectors are the pooled ones, unnormalised
        "xlmr-cls-dense",  # XLM-R, a Dense head and max_seq_length 48 below its positions
        "bert-prompts",  # a default prompt, which sentence-transformers puts before every text
    ],
)
def test_accuracy_passes_against_sentence_transformers(name, st_model_dir, tmp_path, capsys):
    model = st_model_dir(name)
    out = tmp_path / "acc"
    code, stdout, stderr = run_main(
        capsys, "accuracy", "--device", "cpu", "--model-path", str(model), "--json", "--out", str(out)
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    reference = report["reference"]
    assert reference["backend"] == "sentence-transformers"
    assert reference["version"] == sentence_transformers.__version__
    assert reference["directory"] == str(model.resolve()) and reference["official_weights"] is False
    assert (reference["device"], reference["dtype"]) == ("cpu", "float32")
    assert reference["weights_sha256"] == report["under_test"]["weights_sha256"]
    (result,) = report["results"]
    # float32 against float32 on the same weights: only the order of BLAS sums differs (about 1e-6 on vectors of
    # magnitude up to ~2.4), far inside 1e-4. The element-wise bound also checks the scale, which cosines ignore: a
    # reference that normalised a model without a Normalize module would pass on cosines alone.
    assert result["status"] == "PASS" and result["metrics"]["min_cosine"] > 1 - 1e-4
    assert result["metrics"]["max_abs_error"] < 1e-4
    markdown = (out / "accuracy.md").read_text()
    version = sentence_transformers.__version__
    assert f"- Reference: sentence-transformers {version}, CPU float32, {name} in {model.resolve()}" in markdown


def test_reference_of_another_model_fails(st_model_dir, capsys):
    """Model A under test, sentence-transformers on model B (same width, other weights) as reference: FAIL."""
    model, other = st_model_dir("xlmr-mean"), st_model_dir("roberta-max")
    code, stdout, stderr = run_main(
        capsys, "accuracy", "--device", "cpu", "--model-path", str(model), "--reference-model-path", str(other),
        "--json",
    )  # fmt: skip
    assert code == 1, stderr
    assert "accuracy: FAIL" in stderr and "Traceback" not in stderr
    report = json.loads(stdout)
    assert report["status"] == "FAIL" and report["reference"]["backend"] == "sentence-transformers"
    assert report["reference"]["directory"] == str(other.resolve())
    (result,) = report["results"]
    assert {c["name"]: c["passed"] for c in result["checks"]}["min_cosine"] is False


def test_reference_flag_picks_our_transformers_backend(st_model_dir, capsys):
    """``--reference transformers`` keeps the old reference: our transformers backend, on the bundled model unless
    ``--reference-model-path`` names another (a 32-wide model against the 384-wide bundled one is bad input)."""
    model = str(st_model_dir("bert-mean-raw"))
    code, stdout, stderr = run_main(
        capsys, "accuracy", "--device", "cpu", "--model-path", model, "--reference", "transformers",
        "--reference-model-path", model, "--json",
    )  # fmt: skip
    assert code == 0, stderr
    reference = json.loads(stdout)["reference"]
    assert reference["backend"] == "transformers" and "version" not in reference
    code, _, stderr = run_main(
        capsys, "accuracy", "--device", "cpu", "--model-path", model, "--reference", "transformers"
    )
    assert code == 2 and "32-dimensional vectors, the reference 384" in stderr and "Traceback" not in stderr


def test_report_names_sentence_transformers_as_reference(st_model_dir, tmp_path, capsys):
    model = st_model_dir("bert-mean-raw")
    out = tmp_path / "report"
    code, _, stderr = run_main(
        capsys, "report", "--device", "cpu", "--model-path", str(model), "--out", str(out),
        "--batch-sizes", "1,4", "--warmup", "1", "--rounds", "1",
    )  # fmt: skip
    assert code == 0, stderr
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["status"] == "PASS" and accuracy["reference"]["backend"] == "sentence-transformers"
    assert "- Reference: sentence-transformers " in (out / "accuracy.md").read_text()
