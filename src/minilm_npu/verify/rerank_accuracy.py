"""The accuracy protocol for a cross-encoder (reranker): its scores under test against sentence-transformers'
``CrossEncoder`` loading the same directory on the CPU in float32.

Pairs: each of four built-in queries against the built-in 24 mixed sentences (English, Chinese, French,
punctuation, numbers, short and long), plus the user's texts as documents, plus the pairs of an STS file when one is
given. Per dtype the report gives the largest difference of the logits and of the scores (the model's activation,
Sigmoid for a one-label model), Pearson and Spearman of the scores against the reference's, and for each query
whether the best document is the reference's best. PASS: the scores' Spearman at least ``min_spearman`` and every
query's best document the same; float32 must also stay within ``float32_atol`` of the reference (the same
arithmetic in another order moves the last bits only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..samples import MIXED_24
from .accuracy import pearson, spearman
from .results import FAIL, PASS

#: The queries every document is scored against (several scripts, one long).
QUERIES = (MIXED_24[0], MIXED_24[5], MIXED_24[11], "What does a search engine do with a text?")


@dataclass(frozen=True)
class RerankAccuracySettings:
    """One run: the model, the device and dtypes under test, extra documents, STS pairs, what PASS means."""

    model_path: str
    device: str = "auto"
    dtypes: tuple[str, ...] = ("float32",)
    documents: tuple[str, ...] = ()
    sts_pairs: tuple[tuple[str, str], ...] = ()
    min_spearman: float = 0.99
    float32_atol: float = 1e-4


@dataclass
class RerankDtypeResult:
    """One dtype's agreement with the reference."""

    dtype: str
    status: str
    max_abs_logit_error: float
    max_abs_score_error: float
    pearson: float
    spearman: float
    same_best_document: float
    reasons: list[str] = field(default_factory=list)


@dataclass
class RerankAccuracyReport:
    """The run: the model, the reference, the pairs, each dtype's result."""

    model: str
    device: str
    reference: str
    pairs: int
    num_labels: int
    results: list[RerankDtypeResult]

    @property
    def status(self) -> str:
        """PASS when every dtype passes."""
        return PASS if all(r.status == PASS for r in self.results) else FAIL

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {**asdict(self), "status": self.status}


def _reference_logits(model_path: str, pairs: list[list[str]]) -> np.ndarray:
    try:
        import torch
        from sentence_transformers import CrossEncoder
    except ImportError:
        raise InputError(
            "a cross-encoder's accuracy is measured against sentence-transformers' CrossEncoder: "
            "pip install sentence-transformers"
        ) from None
    reference = CrossEncoder(model_path, device="cpu")
    logits = reference.predict(pairs, activation_fn=torch.nn.Identity(), batch_size=32)
    return np.asarray(logits, dtype=np.float32).reshape(len(pairs), -1)


def _compare(dtype: str, ours: np.ndarray, theirs: np.ndarray, activate, settings, queries: int) -> RerankDtypeResult:
    scores, reference = activate(ours), activate(theirs)
    first, ref_first = scores[:, 0], reference[:, 0]
    per_query = len(MIXED_24) + len(settings.documents)
    ranked = range(0, queries * per_query, per_query)
    same_best = float(
        np.mean([first[s : s + per_query].argmax() == ref_first[s : s + per_query].argmax() for s in ranked])
    )
    result = RerankDtypeResult(
        dtype=dtype,
        status=PASS,
        max_abs_logit_error=float(np.abs(ours - theirs).max()),
        max_abs_score_error=float(np.abs(scores - reference).max()),
        pearson=pearson(first, ref_first),
        spearman=spearman(first, ref_first),
        same_best_document=same_best,
    )
    if result.spearman < settings.min_spearman:
        result.reasons.append(f"Spearman {result.spearman:.4f} < {settings.min_spearman}")
    if same_best < 1.0:
        result.reasons.append(f"best document differs for {1 - same_best:.0%} of the queries")
    if dtype == "float32" and result.max_abs_score_error > settings.float32_atol:
        result.reasons.append(f"max |score error| {result.max_abs_score_error:.3g} > {settings.float32_atol}")
    result.status = FAIL if result.reasons else PASS
    return result


def run_rerank_accuracy(settings: RerankAccuracySettings) -> RerankAccuracyReport:
    """Score the pairs with sentence-transformers (CPU, float32) and with our reranker at each dtype, and compare.

    Raises:
        InputError: sentence-transformers missing, or a setting the reranker refuses.
    """
    from ..reranker import Reranker

    documents = [*MIXED_24, *settings.documents]
    pairs = [[query, document] for query in QUERIES for document in documents]
    pairs += [list(pair) for pair in settings.sts_pairs]
    theirs = _reference_logits(settings.model_path, pairs)
    results, name, device, num_labels = [], settings.model_path, settings.device, 1
    for dtype in settings.dtypes:
        reranker = Reranker(model_path=settings.model_path, device=settings.device, dtype=dtype)
        name, device, num_labels = reranker.model_name, str(reranker.device), reranker.num_labels
        ours = reranker.logits(pairs)
        results.append(_compare(dtype, ours, theirs, reranker.activate, settings, len(QUERIES)))
    reference = "sentence-transformers CrossEncoder, CPU, float32"
    return RerankAccuracyReport(name, device, reference, len(pairs), num_labels, results)


def rerank_markdown(report: RerankAccuracyReport) -> str:
    """The report as a Markdown table."""
    lines = [
        f"# Reranker accuracy: {report.model} on {report.device}",
        "",
        f"Reference: {report.reference}; {report.pairs} pairs, {report.num_labels} label(s).",
        "",
        "| dtype | status | max abs logit error | max abs score error | Pearson | Spearman | same best document |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report.results:
        lines.append(
            f"| {r.dtype} | {r.status} | {r.max_abs_logit_error:.3g} | {r.max_abs_score_error:.3g} | "
            f"{r.pearson:.6f} | {r.spearman:.6f} | {r.same_best_document:.0%} |"
        )
    reasons = [f"- {r.dtype}: {reason}" for r in report.results for reason in r.reasons]
    return "\n".join(lines + ([""] + reasons if reasons else []) + [""])
