"""``minilm-npu report``: the doctor, the accuracy protocol and the benchmark for one target, and an index.

One CPU float32 reference model serves the doctor and the accuracy run (when it is the transformers backend), and
one model per dtype serves accuracy and bench, so a whole port verification loads each model once.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..contract import Encoder
from .accuracy import run_accuracy
from .bench import run_bench
from .doctor import run_doctor
from .reference import SentenceTransformersReference, build_reference
from .report import index_markdown, out_dir, write_accuracy, write_bench, write_check
from .results import ReportSet
from .settings import REFERENCE_BACKEND, AccuracySettings, BenchSettings, MakeEncoder


def run_report(out: str | Path, accuracy: AccuracySettings, bench: BenchSettings) -> ReportSet:
    """Run check, accuracy and bench for one target and write everything plus ``index.md`` into ``out``.

    The doctor checks ``accuracy.target`` in its first dtype; ``bench`` times the same target (its ``target`` is
    expected to be the same). One CPU float32 reference model serves the doctor and the accuracy run, and one
    model per dtype serves accuracy and bench.

    Returns:
        The three reports and the index's path.
    """
    out = out_dir(out)
    target = accuracy.target
    reference = build_reference(accuracy)
    # Our transformers backend as the reference also serves the doctor and the bench's CPU column; the
    # sentence-transformers reference serves only the accuracy run (they build their own CPU model).
    ours = None if isinstance(reference, SentenceTransformersReference) else reference
    check = run_doctor(
        target.device,
        dtype=target.dtypes[0],
        backend=target.backend,
        model_path=target.model_path,
        reference_encoder=ours if target.model_path == accuracy.reference_model_path else None,
    )
    write_check(check, out)
    make_encoder, load_seconds = _shared_encoders(accuracy)
    accuracy_run = run_accuracy(accuracy, reference_encoder=reference, make_encoder=make_encoder)
    write_accuracy(accuracy_run, out)
    bench_report = run_bench(
        bench,
        make_encoder=make_encoder,
        cpu_encoder=ours if target.backend_name == REFERENCE_BACKEND else None,
    )
    for result in bench_report.results:
        if result.dtype in load_seconds:  # the bench reused the accuracy run's model: report its real load
            result.load_s = load_seconds[result.dtype]
    write_bench(bench_report, out)
    index = out / "index.md"
    index.write_text(index_markdown(check, accuracy_run.report, bench_report), encoding="utf-8")
    return ReportSet(check=check, accuracy=accuracy_run.report, bench=bench_report, index=index)


def _shared_encoders(settings: AccuracySettings) -> tuple[MakeEncoder, dict[str, float]]:
    """``dtype -> encoder`` building each dtype's model once, and the seconds each load took."""
    encoders: dict[str, Encoder] = {}
    load_seconds: dict[str, float] = {}

    def make_encoder(dtype: str) -> Encoder:
        if dtype not in encoders:
            start = time.perf_counter()
            encoders[dtype] = settings.target.encoder(dtype)
            load_seconds[dtype] = time.perf_counter() - start
        return encoders[dtype]

    return make_encoder, load_seconds
