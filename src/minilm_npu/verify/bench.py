"""The port report's performance protocol: latency and throughput per batch size, device-synchronised.

For each batch size B the batch is the first B texts of the set (cycled when B is larger than the set), so every
run, engine and device times the same inputs. ``warmup`` untimed calls come first — the first of them is reported
separately as the *first-call* time, which holds kernel selection and, on graph-mode devices, the compile for
that shape — then ``rounds`` timed calls, each wrapped in :func:`minilm_npu.devices.synchronize` so queued device
work is inside the measurement. Throughput counts sentences and real (unpadded) tokens.

Optionally the same protocol runs on the CPU (float32, same backend) for the device/CPU speedup column, and for
sentence-transformers on the device under test for the ratio against it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from .accuracy import UNSUPPORTED, builtin_texts

DEFAULT_BATCH_SIZES = (1, 4, 16, 32, 64)
COMPARE_CHOICES = ("sentence-transformers",)

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
) -> list[dict[str, float]]:
    """One row per batch size: latency statistics, sentences/s and tokens/s (from the mean latency)."""
    rows = []
    with tqdm(total=len(batch_sizes) * (warmup + rounds), desc=label, unit="call", disable=not progress) as bar:
        for batch_size in batch_sizes:
            batch = batch_for(texts, batch_size)
            tokens = sum(token_counts[i % len(texts)] for i in range(batch_size))
            stats = time_calls(encode, sync, batch, warmup, rounds, bar)
            seconds = stats["mean_ms"] / 1000.0
            rows.append(
                {
                    "batch_size": batch_size,
                    "tokens": tokens,
                    **stats,
                    "sentences_per_s": batch_size / seconds,
                    "tokens_per_s": tokens / seconds,
                }
            )
    return rows


def _our_encode(encoder) -> Encode:
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
    device: str = "cpu",
    dtypes: Sequence[str] = ("float32",),
    backend: str | None = None,
    model_path: str | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    warmup: int = 3,
    rounds: int = 10,
    texts: Sequence[str] | None = None,
    compare_cpu: bool = False,
    compare: str | None = None,
    progress: bool = False,
    make_encoder: Callable[[str], object] | None = None,
    cpu_encoder=None,
) -> dict:
    """Run the performance protocol for one device and one or more dtypes.

    Args:
        device: The device under test; its first device is timed (one worker, as the port report).
        dtypes: dtypes to time; one the engine rejects is reported as UNSUPPORTED.
        backend: Backend under test (None: the default engine).
        model_path: Model directory or hub id (None: the bundled official model).
        batch_sizes: Batch sizes, each a positive integer.
        warmup: Untimed calls per batch size (at least 1: the first call is reported separately).
        rounds: Timed calls per batch size (at least 1).
        texts: Replaces the built-in 24 mixed sentences.
        compare_cpu: Also time the CPU (float32, same backend) and report device/CPU speedups.
        compare: ``"sentence-transformers"`` to also time it on the device under test and report the ratio.
        progress: Show a progress bar.
        make_encoder: ``dtype -> encoder`` factory for the side under test (default: :class:`MiniLMEncoder`).
        cpu_encoder: A ready CPU float32 encoder for ``compare_cpu``.

    Returns:
        The JSON-ready report.
    """
    from ..devices import parse_devices, synchronize
    from ..encoder import MiniLMEncoder
    from ..engine.backend import DEFAULT_BACKEND, parse_dtypes
    from .environment import describe_device, fingerprint

    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise InputError(f"batch sizes must be positive integers, not {list(batch_sizes)!r}")
    if warmup < 1 or rounds < 1:
        raise InputError("warmup and rounds must each be at least 1")
    if compare is not None and compare not in COMPARE_CHOICES:
        raise InputError(f"--compare takes {', '.join(COMPARE_CHOICES)}, not {compare!r}")
    dtypes = parse_dtypes(dtypes)
    target = parse_devices(device)[0]
    texts = list(texts if texts is not None else builtin_texts())
    if make_encoder is None:

        def make_encoder(dtype: str):
            return MiniLMEncoder(model_path=model_path, device=str(target), dtype=dtype, backend=backend)

    results, model_files = [], None
    st_runs: dict[str, list[dict[str, float]]] = {}
    for dtype in dtypes:
        start = time.perf_counter()
        try:
            encoder = make_encoder(dtype)
        except InputError as err:
            results.append({"dtype": dtype, "status": UNSUPPORTED, "reason": str(err)})
            continue
        load_s = time.perf_counter() - start
        model_files = encoder.model_files
        counts = [len(ids) for ids in encoder.tokenize(texts)]
        rows = run_protocol(
            _our_encode(encoder),
            lambda: synchronize(target),
            texts,
            counts,
            batch_sizes,
            warmup,
            rounds,
            label=f"bench {target} {dtype}",
            progress=progress,
        )
        result = {"dtype": dtype, "status": "ok", "backend": encoder.backend_name, "load_s": load_s, "rows": rows}
        del encoder
        if compare == "sentence-transformers":
            st_dtype = dtype if dtype in ("float16", "bfloat16") else "float32"
            if st_dtype not in st_runs:  # timed once per precision, however many of our dtypes compare to it
                st_encode = _sentence_transformers_encode(str(model_files.directory), str(target), st_dtype)
                st_runs[st_dtype] = run_protocol(
                    st_encode,
                    lambda: synchronize(target),
                    texts,
                    counts,
                    batch_sizes,
                    warmup,
                    rounds,
                    progress=progress,
                    label=f"bench sentence-transformers {st_dtype}",
                )
            result["st_dtype"] = st_dtype
            for row, st_row in zip(rows, st_runs[st_dtype]):
                row["st_sentences_per_s"] = st_row["sentences_per_s"]
                row["st_mean_ms"] = st_row["mean_ms"]
                row["ratio_vs_st"] = row["sentences_per_s"] / st_row["sentences_per_s"]
        results.append(result)

    cpu_rows = None
    if compare_cpu and model_files is not None:
        cpu = cpu_encoder or MiniLMEncoder(model_path=model_path, device="cpu", dtype="float32", backend=backend)
        counts = [len(ids) for ids in cpu.tokenize(texts)]
        cpu_rows = run_protocol(
            _our_encode(cpu),
            lambda: None,
            texts,
            counts,
            batch_sizes,
            warmup,
            rounds,
            label="bench cpu float32",
            progress=progress,
        )
        for result in results:
            for row, cpu_row in zip(result.get("rows", []), cpu_rows):
                row["cpu_sentences_per_s"] = cpu_row["sentences_per_s"]
                row["speedup_vs_cpu"] = row["sentences_per_s"] / cpu_row["sentences_per_s"]

    ran = [r for r in results if r["status"] != UNSUPPORTED]
    device_name, memory = describe_device(target)
    return {
        "kind": "bench",
        "status": "ok" if ran else UNSUPPORTED,
        "environment": fingerprint(
            device=str(target),
            dtype=",".join(dtypes),
            backend=backend or DEFAULT_BACKEND,
            model=model_files.name if model_files else None,
            device_name=device_name,
            device_memory_bytes=memory,
        ),
        "protocol": {
            "texts": len(texts),
            "batch_sizes": list(batch_sizes),
            "warmup": warmup,
            "rounds": rounds,
            "timing": "perf_counter around encode(), devices.synchronize() before and after",
            "compare_cpu": compare_cpu,
            "compare": compare,
        },
        "results": results,
        "cpu": {"dtype": "float32", "backend": backend or DEFAULT_BACKEND, "rows": cpu_rows} if cpu_rows else None,
    }
