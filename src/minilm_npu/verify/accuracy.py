"""The port report's accuracy protocol: the device/dtype/backend under test against the CPU float32 reference.

Both sides encode the same texts — the built-in 24 mixed sentences (English, Chinese, French, punctuation,
numbers, short and long, one of 129–256 tokens) plus the user's — and the report compares them row by row
(cosine), element by element (max abs error, MSE) and as similarity matrices (Pearson r: does the device rank
pairs the way the reference does). The side under test is also checked against itself: each text alone vs in a
batch (batch invariance) and the same batch twice (determinism). With an STS file, both sides' Spearman
correlation with the human scores is reported too.

The reference runs on the CPU in float32 (:mod:`~minilm_npu.verify.reference`). For the bundled model it is the
official all-MiniLM-L6-v2 (the sha256-checked files) through the transformers backend — so a damaged model copy
under test shows up as a FAIL, not as agreement with itself. For any other model it is sentence-transformers itself
loading the same directory (or ``reference_model_path``), with the model's own defaults.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..contract import Encoder, ModelInfo
from ..errors import InputError
from .reference import SentenceTransformersReference, build_reference
from .results import (
    FAIL,
    PASS,
    UNSUPPORTED,
    AccuracyReport,
    AccuracyResult,
    Check,
    Metrics,
    ReferenceSide,
    StsInfo,
    TextsInfo,
    UnderTest,
)
from .settings import AccuracySettings, MakeEncoder, Target, Thresholds

__all__ = ["FAIL", "PASS", "UNSUPPORTED", "AccuracySettings", "Target", "Thresholds", "run_accuracy"]

#: STS pairs: ``(sentences1, sentences2, scores)``.
Sts = tuple[list[str], list[str], np.ndarray]


@dataclass
class AccuracyRun:
    """A finished run: the report, and the arrays the plots need (kept out of the JSON)."""

    report: AccuracyReport
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """PASS, FAIL or UNSUPPORTED (no requested dtype could run)."""
        return self.report.status


# -- inputs ------------------------------------------------------------------------------------------------------
def builtin_texts() -> list[str]:
    """The port report's 24 mixed sentences."""
    try:
        from ..samples import MIXED_24
    except ImportError as err:  # pragma: no cover - only while the samples module is missing from an install
        raise InputError(
            "the built-in sentences (minilm_npu.samples) are missing from this install; pass --texts FILE"
        ) from err
    return list(MIXED_24)


def load_texts(path: str | Path) -> list[str]:
    """User texts: one per line, UTF-8; blank lines are skipped (they add nothing to a comparison)."""
    from ..textio import iter_text_chunks

    texts = [text for chunk in iter_text_chunks(path) for text in chunk if text.strip()]
    if not texts:
        raise InputError(f"{path} holds no texts (one text per line)")
    return texts


def load_sts(path: str | Path, limit: int | None = None) -> Sts:
    """An STS file in the layout of STS-B's ``stsb-dev.tsv``: tab-separated, header with sentence1, sentence2, score.

    Returns:
        ``(sentences1, sentences2, scores)``.

    Raises:
        InputError: unreadable file, missing columns, a score that is not a number, or no rows.
    """
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as err:
        raise InputError(f"cannot read STS file {path}: {err.strerror}") from None
    first, second, scores = [], [], []
    with handle:
        # QUOTE_NONE: STS sentences contain bare quotes, which the csv module would otherwise treat as quoting.
        reader = csv.DictReader(handle, delimiter="\t")
        missing = {"sentence1", "sentence2", "score"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(
                f"STS file {path} lacks column(s) {', '.join(sorted(missing))}; expected a "
                "tab-separated header with sentence1, sentence2, score (as stsb-dev.tsv)"
            )
        for line, row in enumerate(reader, start=2):
            try:
                scores.append(float(row["score"]))
            except (TypeError, ValueError):
                raise InputError(f"STS file {path} line {line}: score {row['score']!r} is not a number") from None
            first.append(row["sentence1"] or "")
            second.append(row["sentence2"] or "")
            if limit and len(scores) >= limit:
                break
    if len(scores) < 3:
        raise InputError(f"STS file {path} has {len(scores)} scored pair(s); a correlation needs at least 3")
    return first, second, np.asarray(scores, dtype=np.float64)


# -- metrics -----------------------------------------------------------------------------------------------------
def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two flat arrays (1.0 when both are constant and equal)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    if denominator == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float((a * b).sum() / denominator)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation."""
    return pearson(_ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64)))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (rows need not be normalised)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.where(norms == 0, 1.0, norms)


def similarity_matrix(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair (embeddings are L2-normalised)."""
    embeddings = np.asarray(embeddings, np.float64)
    return embeddings @ embeddings.T


def compare(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """The port report's metrics for two embedding sets of the same texts.

    The similarity matrices are compared on their off-diagonal upper triangle: the diagonal is 1 on both sides and
    would only inflate the correlation.
    """
    cosines = row_cosines(reference, test)
    diff = np.asarray(test, np.float64) - np.asarray(reference, np.float64)
    upper = np.triu_indices(len(reference), k=1)
    sim_ref, sim_test = similarity_matrix(reference), similarity_matrix(test)
    mean_cos = float(cosines.mean())
    return {
        "mean_cosine": mean_cos,
        "min_cosine": float(cosines.min()),
        "error_rate_pct": (1.0 - mean_cos) * 100.0,
        "max_abs_error": float(np.abs(diff).max()),
        "mse": float((diff * diff).mean()),
        "similarity_pearson_r": pearson(sim_ref[upper], sim_test[upper]) if len(reference) > 2 else 1.0,
        "similarity_max_abs_error": float(np.abs(sim_test - sim_ref).max()),
    }


# -- the protocol ------------------------------------------------------------------------------------------------
_RULES = {"<": lambda v, bound: v < bound, "<=": lambda v, bound: v <= bound, ">=": lambda v, bound: v >= bound}


def _check(name: str, value: float, rule: str, limit: float) -> Check:
    """One PASS/FAIL line: ``value rule limit`` (a NaN never passes)."""
    passed = bool(np.isfinite(value)) and bool(_RULES[rule](value, limit))
    return Check(name=name, value=value, limit=limit, rule=rule, passed=passed)


def _sts_spearman(encoder: Encoder, sts: Sts, progress: bool) -> float:
    first = encoder.encode(sts[0], batch_size=32, show_progress_bar=progress)
    second = encoder.encode(sts[1], batch_size=32, show_progress_bar=progress)
    return spearman(row_cosines(first, second), sts[2])


def _measure(
    encoder: Encoder,
    dtype: str,
    texts: list[str],
    reference: np.ndarray,
    thresholds: Thresholds,
    sts: Sts | None,
    sts_reference: float | None,
    progress: bool,
) -> tuple[AccuracyResult, dict[str, np.ndarray]]:
    start = time.perf_counter()
    batched = encoder.encode(texts, batch_size=32)
    seconds = time.perf_counter() - start
    if batched.shape != reference.shape:
        raise InputError(
            f"the model under test gives {batched.shape[1]}-dimensional vectors, the reference "
            f"{reference.shape[1]}: pass --reference-model-path with the same model"
        )
    repeat = encoder.encode(texts, batch_size=32)
    singles = np.stack(
        [
            encoder.encode([text], batch_size=1)[0]
            for text in tqdm(texts, desc="one by one", unit="text", disable=not progress)
        ]
    )
    invariance = row_cosines(batched, singles)
    metrics = Metrics(
        **compare(reference, batched),
        finite=bool(np.isfinite(batched).all()),
        batch_invariance_min_cosine=float(invariance.min()),
        batch_invariance_max_abs=float(np.abs(batched - singles).max()),
        determinism_min_cosine=float(row_cosines(batched, repeat).min()),
        determinism_max_abs=float(np.abs(batched - repeat).max()),
        encode_seconds=seconds,
    )
    # An int8 engine runs a call of one sentence on the exact float32 graph where a CPU runtime is installed
    # (engine/query.py), so a text alone is float32 and in a batch int8: the two agree within int8's own bound.
    invariance_limit = thresholds.min_cosine if dtype == "int8" else thresholds.self_cosine
    checks = [
        Check(name="finite", value=metrics.finite, limit=True, rule="==", passed=metrics.finite),
        _check("error_rate_pct", metrics.error_rate_pct, "<", thresholds.error_rate_pct),
        _check("min_cosine", metrics.min_cosine, ">=", thresholds.min_cosine),
        _check("batch_invariance_min_cosine", metrics.batch_invariance_min_cosine, ">=", invariance_limit),
        _check("determinism_min_cosine", metrics.determinism_min_cosine, ">=", thresholds.self_cosine),
    ]
    if sts is not None and sts_reference is not None:
        metrics.sts_spearman = _sts_spearman(encoder, sts, progress)
        metrics.sts_spearman_reference = sts_reference
        metrics.sts_spearman_drop = sts_reference - metrics.sts_spearman
        checks.append(_check("sts_spearman_drop", metrics.sts_spearman_drop, "<=", thresholds.sts_drop))
    result = AccuracyResult(
        dtype=dtype,
        backend=encoder.config.backend,
        status=PASS if all(c.passed for c in checks) else FAIL,
        metrics=metrics,
        checks=checks,
        per_text_cosine=[float(c) for c in row_cosines(reference, batched)],
    )
    return result, {"reference": reference, "test": batched}


def weights_sha256(model: ModelInfo) -> tuple[str, bool]:
    """The SHA-256 of the model's weights, and whether they are the official ones."""
    from ..modelfiles import OFFICIAL_SHA256, sha256_of

    digest = sha256_of(Path(model.weights_path))
    return digest, digest == OFFICIAL_SHA256


def _under_test(target: Target, device_name: str | None, model: ModelInfo | None) -> UnderTest:
    side = UnderTest(device=target.device, device_name=device_name, backend=target.backend_name)
    if model is not None:
        side.model, side.directory = model.name, model.directory
        side.weights_sha256, side.official_weights = weights_sha256(model)
    return side


def _reference(encoder: Encoder | SentenceTransformersReference) -> ReferenceSide:
    model = encoder.model_info
    digest, official = weights_sha256(model)
    if isinstance(encoder, SentenceTransformersReference):
        backend, version = encoder.backend, encoder.version
    else:
        backend, version = encoder.config.backend, None
    return ReferenceSide(
        device="cpu",
        dtype="float32",
        backend=backend,
        model=model.name,
        directory=model.directory,
        weights_sha256=digest,
        official_weights=official,
        version=version,
    )


def _texts_info(encoder: Encoder, texts: list[str], user: int) -> TextsInfo:
    lengths = [len(ids) for ids in encoder.tokenize(texts, truncate=False)]
    return TextsInfo(
        count=len(texts),
        builtin=len(texts) - user,
        user=user,
        tokens_min=min(lengths),
        tokens_max=max(lengths),
        tokens_mean=float(np.mean(lengths)),
        over_128_tokens=sum(n > 128 for n in lengths),
        truncated_at_max_seq_length=sum(n > encoder.max_seq_length for n in lengths),
    )


def run_accuracy(
    settings: AccuracySettings,
    reference_encoder: Encoder | SentenceTransformersReference | None = None,
    make_encoder: MakeEncoder | None = None,
) -> AccuracyRun:
    """Run the accuracy protocol for one device and one or more dtypes (a dtype the engine rejects is reported as
    UNSUPPORTED, not raised).

    Args:
        settings: What to compare, against which reference, on which texts.
        reference_encoder: A ready CPU float32 reference (saves a model load when a caller has one; default:
            :func:`~minilm_npu.verify.reference.build_reference` of ``settings``).
        make_encoder: ``dtype -> encoder`` for the side under test (default: the real encoder of
            ``settings.target``).

    Returns:
        The report and the arrays for the plots.

    Raises:
        InputError, DeviceError, ModelFilesError: bad input, an unavailable device, a missing model.
    """
    from ..devices import cpu_fallbacks, parse_devices, record_cpu_fallbacks
    from .environment import describe_device, fingerprint

    target = settings.target
    devices = parse_devices(target.device)  # fails early, and clearly, for a device this machine lacks
    texts = list(settings.texts if settings.texts is not None else builtin_texts()) + list(settings.user_texts)
    if not texts:
        raise InputError("no texts to compare")
    sts = load_sts(settings.sts_path, settings.sts_limit) if settings.sts_path else None
    make = make_encoder or target.encoder
    if reference_encoder is None:
        reference_encoder = build_reference(settings)
    reference = reference_encoder.encode(texts, batch_size=32, show_progress_bar=settings.progress)
    sts_reference = _sts_spearman(reference_encoder, sts, settings.progress) if sts else None
    texts_info = _texts_info(reference_encoder, texts, len(settings.user_texts))
    results: list[AccuracyResult] = []
    arrays: dict[str, dict[str, np.ndarray]] = {}
    under_test: ModelInfo | None = None
    for dtype in target.dtypes:
        try:
            encoder = make(dtype)
        except InputError as err:
            results.append(AccuracyResult(dtype=dtype, status=UNSUPPORTED, reason=str(err)))
            continue
        under_test = under_test or encoder.model_info
        with record_cpu_fallbacks(devices[0], f"accuracy {devices[0]} {dtype}"):
            result, arrays[dtype] = _measure(
                encoder, dtype, texts, reference, settings.thresholds, sts, sts_reference, settings.progress
            )
        results.append(result)
        del encoder  # one model copy at a time on the device
    ran = [r for r in results if r.status != UNSUPPORTED]
    fallbacks = cpu_fallbacks() if devices[0].type == "npu" else None
    status = UNSUPPORTED if not ran else (PASS if all(r.status == PASS for r in ran) and not fallbacks else FAIL)
    device_name, _ = describe_device(devices[0])
    report = AccuracyReport(
        status=status,
        environment=fingerprint(
            device=target.device,
            dtype=",".join(target.dtypes),
            backend=target.backend_name,
            model=(under_test or reference_encoder.model_info).name,
            device_name=device_name,
        ),
        under_test=_under_test(target, device_name, under_test),
        reference=_reference(reference_encoder),
        texts=texts_info,
        sts=StsInfo(file=str(settings.sts_path), pairs=len(sts[2]), spearman_reference=sts_reference)
        if sts and sts_reference is not None
        else None,
        thresholds=settings.thresholds,
        results=results,
        cpu_fallbacks=fallbacks,
    )
    return AccuracyRun(report=report, arrays=arrays)
