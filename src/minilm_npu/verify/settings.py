"""What ``accuracy``, ``bench`` and ``report`` are asked to do, each checked once, when it is built.

The command line builds these from its flags (:mod:`minilm_npu.cli.accuracy`, :mod:`~minilm_npu.cli.bench`,
:mod:`~minilm_npu.cli.report`); the protocols (:func:`~minilm_npu.verify.accuracy.run_accuracy`,
:func:`~minilm_npu.verify.bench.run_bench`) take them whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEFAULT_BACKEND, parse_dtypes
from ..contract import Encoder
from ..errors import InputError

DEFAULT_BATCH_SIZES = (1, 4, 16, 32, 64)
COMPARE_CHOICES = ("sentence-transformers",)
SENTENCE_TRANSFORMERS = "sentence-transformers"
REFERENCE_BACKEND = "transformers"
#: ``--reference``: sentence-transformers itself, or the transformers backend (:mod:`~minilm_npu.verify.reference`).
REFERENCE_CHOICES = (SENTENCE_TRANSFORMERS, REFERENCE_BACKEND)

#: ``dtype -> encoder`` for the side under test (tests pass fakes; a report shares one model per dtype).
MakeEncoder = Callable[[str], Encoder]


def build_encoder(model_path: str | None, device: str, dtype: str, backend: str | None) -> Encoder:
    """The real encoder (:class:`~minilm_npu.encoder.MiniLMEncoder`) for one side of a comparison."""
    from ..encoder import MiniLMEncoder

    return MiniLMEncoder(model_path=model_path, device=device, dtype=dtype, backend=backend)


@dataclass(frozen=True)
class Target:
    """The side under test: ``--device``, ``--dtype`` (one or more), ``--backend``, ``--model-path``.

    Raises:
        InputError: an unknown dtype, or none.
    """

    device: str = "cpu"
    dtypes: Sequence[str] = ("float32",)
    backend: str | None = None  # None: the default engine
    model_path: str | None = None  # None: the bundled official model

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtypes", tuple(parse_dtypes(self.dtypes)))

    @property
    def backend_name(self) -> str:
        """The backend actually under test."""
        return self.backend or DEFAULT_BACKEND

    def encoder(self, dtype: str, device: str | None = None) -> Encoder:
        """The encoder under test in ``dtype`` (on ``device``, default the target's device string)."""
        return build_encoder(self.model_path, device or self.device, dtype, self.backend)


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


@dataclass(frozen=True)
class AccuracySettings:
    """One accuracy run.

    Attributes:
        target: The device/dtypes/backend/model under test.
        reference_model_path: Model for the CPU float32 reference (None: for sentence-transformers the model under
            test's directory, for transformers the bundled official model).
        reference: ``"sentence-transformers"`` or ``"transformers"``; None: transformers on the bundled official
            files when the bundled model is under test (so a damaged copy shows up as a FAIL), else
            sentence-transformers (:func:`~minilm_npu.verify.reference.reference_kind`).
        texts: Replaces the built-in 24 sentences (tests use it); ``user_texts`` are added after them.
        user_texts: Extra texts, e.g. from ``--texts FILE``.
        sts_path: An STS file (stsb-dev.tsv layout) for Spearman on both sides.
        sts_limit: Use only the first N pairs of the STS file.
        thresholds: What PASS means.
        progress: Show progress bars.

    Raises:
        InputError: an unknown reference.
    """

    target: Target = field(default_factory=Target)
    reference_model_path: str | None = None
    reference: str | None = None
    texts: Sequence[str] | None = None
    user_texts: Sequence[str] = ()
    sts_path: str | Path | None = None
    sts_limit: int | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    progress: bool = False

    def __post_init__(self) -> None:
        if self.reference is not None and self.reference not in REFERENCE_CHOICES:
            raise InputError(f"--reference takes {', '.join(REFERENCE_CHOICES)}, not {self.reference!r}")
        if self.texts is not None:
            object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "user_texts", tuple(self.user_texts))


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark run.

    Attributes:
        target: The device/dtypes/backend/model under test; its first device is timed (one worker, as the port
            report).
        batch_sizes: Batch sizes, each a positive integer.
        warmup: Untimed calls per batch size (at least 1: the first call is reported separately).
        rounds: Timed calls per batch size (at least 1).
        texts: Replaces the built-in 24 mixed sentences.
        compare_cpu: Also time the CPU (float32, same backend) and report device/CPU speedups.
        compare: ``"sentence-transformers"`` to also time it on the device under test and report the ratio.
        progress: Show a progress bar.

    Raises:
        InputError: a batch size that is not a positive integer, warmup or rounds below 1, an unknown peer.
    """

    target: Target = field(default_factory=Target)
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES
    warmup: int = 3
    rounds: int = 10
    texts: Sequence[str] | None = None
    compare_cpu: bool = False
    compare: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        sizes = self.batch_sizes
        if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
            raise InputError(f"batch sizes must be positive integers, not {list(sizes)!r}")
        if self.warmup < 1 or self.rounds < 1:
            raise InputError("warmup and rounds must each be at least 1")
        if self.compare is not None and self.compare not in COMPARE_CHOICES:
            raise InputError(f"--compare takes {', '.join(COMPARE_CHOICES)}, not {self.compare!r}")
        object.__setattr__(self, "batch_sizes", tuple(sizes))
        if self.texts is not None:
            object.__setattr__(self, "texts", tuple(self.texts))
