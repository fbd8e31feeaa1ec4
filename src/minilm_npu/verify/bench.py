"""The port report's performance protocol: latency and throughput per batch size, device-synchronised.

For each batch size B the batch is the first B texts of the set (cycled when B is larger than the set), so every
run, engine and device times the same inputs. ``warmup`` untimed calls come first — the first of them is reported
separately as the *first-call* time, which holds kernel selection and, on graph-mode devices, the compile for
that shape — then ``rounds`` timed calls, each wrapped in :func:`minilm_npu.devices.synchronize` so queued device
work is inside the measurement. Throughput counts sentences and real (unpadded) tokens.

Optionally the same protocol runs on the CPU (float32, same backend) for the device/CPU speedup column, and for
sentence-transformers on the device under test for the ratio against it. On an NPU, an operator of our forward that
falls back to the CPU fails the report (``status`` ``FAIL``), however fast it ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..contract import Encoder, ModelInfo
from ..errors import InputError
from .accuracy import builtin_texts
from .results import FAIL, OK, UNSUPPORTED, BenchProtocol, BenchReport, BenchResult, BenchRow, CpuRun
from .settings import COMPARE_CHOICES, DEFAULT_BATCH_SIZES, BenchSettings, MakeEncoder, Target, build_encoder

__all__ = ["COMPARE_CHOICES", "DEFAULT_BATCH_SIZES", "BenchSettings", "Target", "run_bench"]

Encode = Callable[[list[str], int], object]


def batch_for(texts: Sequence[str], batch_size: int) -> list[str]:
    """The first ``batch_size`` texts, cycling through ``texts`` when it is shorter."""
    return [texts[i % len(texts)] for i in range(batch_size)]


def time_calls(
    encode: Encode, sync: Callable[[], None], batch: list[str], warmup: int, rounds: int, bar: tqdm | None = None
) -> dict[str, float]:
    """Time ``encode(batch, len(batch))``: ``warmup`` untimed calls (the first reported alone), then ``rounds``.

    Returns:
        ``first_call_ms`` and the timed calls' ``mean_ms``, ``p50_ms``, ``p95_ms``, ``min_ms``, ``max_ms``.
    """
    return time_each(encode, sync, [batch] * (warmup + rounds), warmup, bar)


def time_each(
    encode: Encode, sync: Callable[[], None], batches: Sequence[list[str]], warmup: int, bar: tqdm | None = None
) -> dict[str, float]:
    """:func:`time_calls` over a sequence of batches (e.g. one server request's texts each): the first
    ``warmup`` calls are untimed (the first reported alone), every later call is timed, device-synchronised."""
    first_ms = None
    samples: list[float] = []
    for index, batch in enumerate(batches):
        sync()
        start = time.perf_counter()
        encode(batch, len(batch))
        sync()
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        if index == 0:
            first_ms = elapsed_ms
        if index >= warmup:
            samples.append(elapsed_ms)
        if bar is not None:
            bar.update(1)
    timed = np.asarray(samples, dtype=np.float64)
    return {
        "first_call_ms": float(first_ms),
        "mean_ms": float(timed.mean()),
        "p50_ms": float(np.percentile(timed, 50)),
        "p95_ms": float(np.percentile(timed, 95)),
        "min_ms": float(timed.min()),
        "max_ms": float(timed.max()),
    }


def run_protocol(
    encode: Encode,
    sync: Callable[[], None],
    texts: Sequence[str],
    token_counts: Sequence[int],
    batch_sizes: Sequence[int],
    warmup: int,
    rounds: int,
    label: str = "bench",
    progress: bool = False,
) -> list[BenchRow]:
    """One row per batch size: latency statistics, sentences/s and tokens/s (from the mean latency)."""
    rows = []
    with tqdm(total=len(batch_sizes) * (warmup + rounds), desc=label, unit="call", disable=not progress) as bar:
        for batch_size in batch_sizes:
            batch = batch_for(texts, batch_size)
            tokens = sum(token_counts[i % len(texts)] for i in range(batch_size))
            stats = time_calls(encode, sync, batch, warmup, rounds, bar)
            seconds = stats["mean_ms"] / 1000.0
            rows.append(
                BenchRow(
                    batch_size=batch_size,
                    tokens=tokens,
                    **stats,
                    sentences_per_s=batch_size / seconds,
                    tokens_per_s=tokens / seconds,
                )
            )
    return rows


def _our_encode(encoder: Encoder) -> Encode:
    return lambda batch, batch_size: encoder.encode(batch, batch_size=batch_size)


def _sentence_transformers_encode(model_dir: str, device: str, dtype: str) -> Encode:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise InputError("--compare sentence-transformers needs `pip install sentence-transformers`") from err
    import torch

    model = SentenceTransformer(model_dir, device=device)
    # Same precision as ours where sentence-transformers can run it; int8 is compared against its float32. Set it
    # explicitly: transformers 5 loads a checkpoint in its stored dtype (a float16 copy would run float16).
    model = model.to(getattr(torch, dtype if dtype in ("float16", "bfloat16") else "float32"))
    return lambda batch, batch_size: model.encode(batch, batch_size=batch_size, convert_to_numpy=True)


def run_bench(
    settings: BenchSettings, make_encoder: MakeEncoder | None = None, cpu_encoder: Encoder | None = None
) -> BenchReport:
    """Run the performance protocol for one device and one or more dtypes (a dtype the engine rejects is reported
    as UNSUPPORTED).

    Args:
        settings: What to time, and how.
        make_encoder: ``dtype -> encoder`` for the side under test (default: the real encoder of
            ``settings.target`` on its first device).
        cpu_encoder: A ready CPU float32 encoder for ``compare_cpu``.

    Returns:
        The report.
    """
    from ..devices import cpu_fallbacks, parse_devices, record_cpu_fallbacks, synchronize
    from .environment import describe_device, fingerprint

    target = settings.target
    device = parse_devices(target.device)[0]
    texts = list(settings.texts if settings.texts is not None else builtin_texts())
    make = make_encoder or (lambda dtype: target.encoder(dtype, device=str(device)))

    def time_encoder(encode: Encode, sync: Callable[[], None], counts: list[int], label: str) -> list[BenchRow]:
        protocol = (settings.batch_sizes, settings.warmup, settings.rounds)
        return run_protocol(encode, sync, texts, counts, *protocol, label=label, progress=settings.progress)

    results: list[BenchResult] = []
    model: ModelInfo | None = None
    st_runs: dict[str, list[BenchRow]] = {}
    for dtype in target.dtypes:
        start = time.perf_counter()
        try:
            encoder = make(dtype)
        except InputError as err:
            results.append(BenchResult(dtype=dtype, status=UNSUPPORTED, reason=str(err)))
            continue
        load_s = time.perf_counter() - start
        model = encoder.model_info
        counts = [len(ids) for ids in encoder.tokenize(texts)]
        with record_cpu_fallbacks(device, f"bench {device} {dtype}"):  # ours only: the peer's are not ours to fix
            rows = time_encoder(_our_encode(encoder), lambda: synchronize(device), counts, f"bench {device} {dtype}")
        result = BenchResult(dtype=dtype, status=OK, backend=encoder.config.backend, load_s=load_s, rows=rows)
        del encoder
        if settings.compare == "sentence-transformers":
            st_dtype = dtype if dtype in ("float16", "bfloat16") else "float32"
            if st_dtype not in st_runs:  # timed once per precision, however many of our dtypes compare to it
                st_encode = _sentence_transformers_encode(model.directory, str(device), st_dtype)
                label = f"bench sentence-transformers {st_dtype}"
                st_runs[st_dtype] = time_encoder(st_encode, lambda: synchronize(device), counts, label)
            result.st_dtype = st_dtype
            for row, st_row in zip(rows, st_runs[st_dtype]):
                row.st_sentences_per_s = st_row.sentences_per_s
                row.st_mean_ms = st_row.mean_ms
                row.ratio_vs_st = row.sentences_per_s / st_row.sentences_per_s
        results.append(result)

    cpu_rows = None
    if settings.compare_cpu and model is not None:
        cpu = cpu_encoder or build_encoder(target.model_path, "cpu", "float32", target.backend)
        counts = [len(ids) for ids in cpu.tokenize(texts)]
        cpu_rows = time_encoder(_our_encode(cpu), lambda: None, counts, "bench cpu float32")
        for result in results:
            for row, cpu_row in zip(result.rows or [], cpu_rows):
                row.cpu_sentences_per_s = cpu_row.sentences_per_s
                row.speedup_vs_cpu = row.sentences_per_s / cpu_row.sentences_per_s

    ran = [r for r in results if r.status != UNSUPPORTED]
    fallbacks = cpu_fallbacks() if device.type == "npu" else None
    device_name, memory = describe_device(device)
    return BenchReport(
        status=(FAIL if fallbacks else OK) if ran else UNSUPPORTED,
        environment=fingerprint(
            device=str(device),
            dtype=",".join(target.dtypes),
            backend=target.backend_name,
            model=model.name if model else None,
            device_name=device_name,
            device_memory_bytes=memory,
        ),
        protocol=BenchProtocol(
            texts=len(texts),
            batch_sizes=list(settings.batch_sizes),
            warmup=settings.warmup,
            rounds=settings.rounds,
            timing="perf_counter around encode(), devices.synchronize() before and after",
            compare_cpu=settings.compare_cpu,
            compare=settings.compare,
        ),
        results=results,
        cpu=CpuRun(dtype="float32", backend=target.backend_name, rows=cpu_rows) if cpu_rows else None,
        cpu_fallbacks=fallbacks,
    )
