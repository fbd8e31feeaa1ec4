"""``minilm-npu accuracy --model-path`` on a cross-encoder: its scores against sentence-transformers' CrossEncoder
loading the same directory (a random-weight fixture model saved by CrossEncoder.save)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from minilm_npu.reranker import Reranker
from minilm_npu.verify.rerank_accuracy import RerankAccuracySettings, run_rerank_accuracy


def test_accuracy_command_passes_float32_against_cross_encoder(st_model_dir, tmp_path):
    model = st_model_dir("ce-bert")
    run = subprocess.run(
        [sys.executable, "-m", "minilm_npu.cli.main", "accuracy", "--model-path", str(model), "--device", "cpu",
         "--json", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["status"] == "PASS" and report["reference"].startswith("sentence-transformers CrossEncoder")
    (result,) = report["results"]
    assert result["dtype"] == "float32" and result["max_abs_score_error"] < 1e-5 and result["spearman"] > 0.9999
    assert report["pairs"] == 4 * 24
    assert (tmp_path / "rerank_accuracy.md").read_text().startswith("# Reranker accuracy: ce-bert")


def test_scores_that_drift_fail(st_model_dir, monkeypatch):
    """A reranker whose scores are off (noise on the logits) is a FAIL, with the reasons."""
    logits = Reranker.logits
    rng = np.random.default_rng(0)

    def noisy(self, pairs, *args, **kwargs):
        out = logits(self, pairs, *args, **kwargs)
        return out + rng.normal(0, 3, out.shape).astype(np.float32)

    monkeypatch.setattr(Reranker, "logits", noisy)
    settings = RerankAccuracySettings(model_path=str(st_model_dir("ce-xlmr")), device="cpu", documents=("a b c",))
    report = run_rerank_accuracy(settings)
    assert report.status == "FAIL" and report.pairs == 4 * 25
    assert any("Spearman" in reason for reason in report.results[0].reasons)
