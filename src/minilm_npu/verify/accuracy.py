"""The port report's accuracy protocol: the device/dtype/backend under test against the CPU float32 reference.

Both sides encode the same texts — the built-in 24 mixed sentences (English, Chinese, French, punctuation,
numbers, short and long, one of 129–256 tokens) plus the user's — and the report compares them row by row
(cosine), element by element (max abs error, MSE) and as similarity matrices (Pearson r: does the device rank
pairs the way the reference does). The side under test is also checked against itself: each text alone vs in a
batch (batch invariance) and the same batch twice (determinism). With an STS file, both sides' Spearman
correlation with the human scores is reported too.

The reference is the official all-MiniLM-L6-v2 (the bundled, sha256-checked files) through the transformers
backend on the CPU in float32 — so a damaged model copy under test shows up as a FAIL, not as agreement with
itself. Pass ``reference_model_path`` to check another model.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError

REFERENCE_BACKEND = "transformers"
PASS, FAIL, UNSUPPORTED = "PASS", "FAIL", "UNSUPPORTED"


@dataclass(frozen=True)
class Thresholds:
    """What PASS means.

    Attributes:
        error_rate_pct: Largest allowed error rate, ``(1 - mean cosine) * 100`` (the port report's 1 %).
        min_cosine: Smallest allowed cosine of any single text against the reference.
        self_cosine: Smallest allowed cosine between a text alone and in a batch, and between two repeats.
        sts_drop: Largest allowed drop of the STS Spearman below the reference's (only with an STS file).
    """

    error_rate_pct: float = 1.0
    min_cosine: float = 0.99
    self_cosine: float = 0.999
    sts_drop: float = 0.005


@dataclass
class AccuracyRun:
    """A finished run: the JSON-ready report, and the arrays the plots need (kept out of the JSON)."""

    report: dict
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """PASS, FAIL or UNSUPPORTED (no requested dtype could run)."""
        return self.report["status"]


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


def load_sts(path: str | Path, limit: int | None = None) -> tuple[list[str], list[str], np.ndarray]:
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


def _check(name: str, value: float, rule: str, limit: float) -> dict[str, object]:
    """One PASS/FAIL line: ``value rule limit`` (a NaN never passes)."""
    passed = bool(np.isfinite(value)) and bool(_RULES[rule](value, limit))
    return {"name": name, "value": value, "limit": limit, "rule": rule, "passed": passed}


def _sts_spearman(encoder, sts: tuple[list[str], list[str], np.ndarray], progress: bool) -> float:
    first = encoder.encode(sts[0], batch_size=32, show_progress_bar=progress)
    second = encoder.encode(sts[1], batch_size=32, show_progress_bar=progress)
    return spearman(row_cosines(first, second), sts[2])


def _measure(
    encoder,
    texts: list[str],
    reference: np.ndarray,
    thresholds: Thresholds,
    sts,
    sts_reference: float | None,
    progress: bool,
) -> tuple[dict, dict[str, np.ndarray]]:
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
    metrics = compare(reference, batched)
    invariance = row_cosines(batched, singles)
    metrics.update(
        {
            "finite": bool(np.isfinite(batched).all()),
            "batch_invariance_min_cosine": float(invariance.min()),
            "batch_invariance_max_abs": float(np.abs(batched - singles).max()),
            "determinism_min_cosine": float(row_cosines(batched, repeat).min()),
            "determinism_max_abs": float(np.abs(batched - repeat).max()),
            "encode_seconds": seconds,
        }
    )
    checks = [
        {"name": "finite", "value": metrics["finite"], "limit": True, "rule": "==", "passed": metrics["finite"]},
        _check("error_rate_pct", metrics["error_rate_pct"], "<", thresholds.error_rate_pct),
        _check("min_cosine", metrics["min_cosine"], ">=", thresholds.min_cosine),
        _check("batch_invariance_min_cosine", metrics["batch_invariance_min_cosine"], ">=", thresholds.self_cosine),
        _check("determinism_min_cosine", metrics["determinism_min_cosine"], ">=", thresholds.self_cosine),
    ]
    if sts is not None:
        metrics["sts_spearman"] = _sts_spearman(encoder, sts, progress)
        metrics["sts_spearman_reference"] = sts_reference
        metrics["sts_spearman_drop"] = sts_reference - metrics["sts_spearman"]
        checks.append(_check("sts_spearman_drop", metrics["sts_spearman_drop"], "<=", thresholds.sts_drop))
    result = {
        "status": PASS if all(c["passed"] for c in checks) else FAIL,
        "metrics": metrics,
        "checks": checks,
        "per_text_cosine": [float(c) for c in row_cosines(reference, batched)],
    }
    return result, {"reference": reference, "test": batched}


def _weights_info(model_files) -> dict[str, object]:
    from ..modelfiles import OFFICIAL_SHA256, sha256_of

    digest = sha256_of(model_files.weights_path)
    return {
        "model": model_files.name,
        "directory": str(model_files.directory),
        "weights_sha256": digest,
        "official_weights": digest == OFFICIAL_SHA256,
    }


def run_accuracy(
    device: str = "cpu",
    dtypes: Sequence[str] = ("float32",),
    backend: str | None = None,
    model_path: str | None = None,
    reference_model_path: str | None = None,
    texts: Sequence[str] | None = None,
    user_texts: Sequence[str] = (),
    sts_path: str | Path | None = None,
    sts_limit: int | None = None,
    thresholds: Thresholds = Thresholds(),
    progress: bool = False,
    reference_encoder=None,
    make_encoder: Callable[[str], object] | None = None,
) -> AccuracyRun:
    """Run the accuracy protocol for one device and one or more dtypes.

    Args:
        device: The device under test (``"npu:0"``, ``"cuda:0"``, ``"cpu"``).
        dtypes: dtypes to test; one the engine rejects is reported as UNSUPPORTED, not raised.
        backend: Backend under test (None: the default engine).
        model_path: Model under test (None: the bundled official model).
        reference_model_path: Model for the CPU float32 reference (None: the bundled official model).
        texts: Replaces the built-in 24 sentences (tests use it); ``user_texts`` are added after them.
        user_texts: Extra texts, e.g. from ``--texts FILE``.
        sts_path: An STS file (stsb-dev.tsv layout) for Spearman on both sides.
        sts_limit: Use only the first N pairs of the STS file.
        thresholds: What PASS means.
        progress: Show progress bars.
        reference_encoder: A ready reference encoder (saves a model load when a caller already has one).
        make_encoder: ``dtype -> encoder`` factory for the side under test (default: :class:`MiniLMEncoder`).

    Returns:
        The report and the arrays for the plots.

    Raises:
        InputError, DeviceError, ModelFilesError: bad input, an unavailable device, a missing model.
    """
    from ..devices import parse_devices
    from ..encoder import MiniLMEncoder
    from ..engine.backend import DEFAULT_BACKEND, parse_dtypes
    from .environment import describe_device, fingerprint

    dtypes = parse_dtypes(dtypes)
    devices = parse_devices(device)  # fails early, and clearly, for a device this machine lacks
    all_texts = list(texts if texts is not None else builtin_texts()) + list(user_texts)
    if not all_texts:
        raise InputError("no texts to compare")
    sts = load_sts(sts_path, sts_limit) if sts_path else None
    if make_encoder is None:

        def make_encoder(dtype: str):
            return MiniLMEncoder(model_path=model_path, device=device, dtype=dtype, backend=backend)

    if reference_encoder is None:
        reference_encoder = MiniLMEncoder(
            model_path=reference_model_path, device="cpu", dtype="float32", backend=REFERENCE_BACKEND
        )
    reference = reference_encoder.encode(all_texts, batch_size=32, show_progress_bar=progress)
    sts_reference = _sts_spearman(reference_encoder, sts, progress) if sts else None
    lengths = [len(ids) for ids in reference_encoder.tokenize(all_texts, truncate=False)]
    results, arrays = [], {}
    under_test_files = None
    for dtype in dtypes:
        try:
            encoder = make_encoder(dtype)
        except InputError as err:
            results.append({"dtype": dtype, "status": UNSUPPORTED, "reason": str(err)})
            continue
        under_test_files = under_test_files or encoder.model_files
        result, arrays[dtype] = _measure(encoder, all_texts, reference, thresholds, sts, sts_reference, progress)
        results.append({"dtype": dtype, "backend": encoder.backend_name, **result})
        del encoder  # one model copy at a time on the device
    ran = [r for r in results if r["status"] != UNSUPPORTED]
    status = UNSUPPORTED if not ran else (PASS if all(r["status"] == PASS for r in ran) else FAIL)
    device_name, _ = describe_device(devices[0])
    report = {
        "kind": "accuracy",
        "status": status,
        "environment": fingerprint(
            device=device,
            dtype=",".join(dtypes),
            backend=backend or DEFAULT_BACKEND,
            model=(under_test_files or reference_encoder.model_files).name,
            device_name=device_name,
        ),
        "under_test": {
            "device": device,
            "device_name": device_name,
            "backend": backend or DEFAULT_BACKEND,
            **(_weights_info(under_test_files) if under_test_files else {}),
        },
        "reference": {
            "device": "cpu",
            "dtype": "float32",
            "backend": reference_encoder.backend_name,
            **_weights_info(reference_encoder.model_files),
        },
        "texts": {
            "count": len(all_texts),
            "builtin": len(all_texts) - len(user_texts),
            "user": len(user_texts),
            "tokens_min": min(lengths),
            "tokens_max": max(lengths),
            "tokens_mean": float(np.mean(lengths)),
            "over_128_tokens": sum(n > 128 for n in lengths),
            "truncated_at_max_seq_length": sum(n > reference_encoder.max_seq_length for n in lengths),
        },
        "sts": {"file": str(sts_path), "pairs": len(sts[2]), "spearman_reference": sts_reference} if sts else None,
        "thresholds": asdict(thresholds),
        "results": results,
    }
    return AccuracyRun(report=report, arrays=arrays)
