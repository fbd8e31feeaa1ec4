"""The resumable embedding job: input rows in, Parquet shards (or one ``.npy``) out, every row exactly once.

The job first takes the output's lock (one writer at a time) and writes its manifest, before any other file of
its own, so a directory it touched is always recognisably its own. Then the loop reads a shard's worth of rows,
embeds the good ones, writes the shard atomically (recording its size and checksum), appends any skipped rows to
the side file, and only then commits by atomically replacing the manifest. After ``kill -9`` at any point the
manifest still describes a consistent prefix of the input; the next run checks the committed shards, deletes what
was written after the last commit and continues from the manifest's cursor. Engines (in-process encoder, Ray) only
supply the embedded rows; both run through :func:`embed_corpus`, so both hold the lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError, OutputError
from .layout import Layout
from .lock import acquire_lock
from .manifest import SKIPPED_NAME, Manifest, describe_change, job_fingerprint
from .readers import CorpusReader, InputFile, Record, count_rows, expand_inputs
from .repair import check_shards, reembed_shard
from .writer import assemble_npy, write_shard

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")
#: Rows per shard: the most work a crash can lose, and the unit handed to the encoder at once.
DEFAULT_SHARD_ROWS = 8192
#: Fault injection for the kill-and-resume tests: ``STAGE:N`` makes the process SIGKILL itself at that point, so
#: the worst moments are hit exactly. Stages, in commit order (N is the shard index): ``locked`` (lock taken, no
#: manifest yet), ``before-shard``, ``shard-tmp`` (written and synced, not renamed), ``after-shard``,
#: ``skipped-partial`` (half the shard's skipped-row lines appended), ``after-skipped``, ``manifest-tmp`` (new
#: manifest written, not renamed; N is the number of shards it lists, 0 for the job's first manifest),
#: ``after-manifest``; for ``.npy`` output ``npy-written`` and ``npy-moved`` (N is 0).
CRASH_ENV = "MINILM_NPU_CORPUS_CRASH"
#: Stages of :data:`CRASH_ENV`, for the tests that visit every one.
CRASH_STAGES = (
    "locked",
    "before-shard",
    "shard-tmp",
    "after-shard",
    "skipped-partial",
    "after-skipped",
    "manifest-tmp",
    "after-manifest",
    "npy-written",
    "npy-moved",
)

#: What an engine yields per shard: the shard's input rows (good and bad, in order) and the good rows' vectors.
ShardBatch = tuple[list[Record], np.ndarray]


@dataclass
class EmbedSettings:
    """Options of one job (the command line's flags)."""

    text_field: str = "text"
    id_field: str | None = None
    keep_text: bool = False
    on_error: str = "fail"
    overwrite: bool = False
    batch_size: int | None = None  # None: the encoder's own (EncoderConfig.batch_size)
    shard_rows: int = DEFAULT_SHARD_ROWS
    progress: bool | None = None  # None: a bar when stderr is a terminal
    verify: bool = False  # check every committed shard's checksum, not only its size and footer

    def validate(self) -> None:
        """Raises InputError for a setting out of range."""
        if self.on_error not in ON_ERROR:
            raise InputError(f"--on-error must be one of {', '.join(ON_ERROR)}, not {self.on_error!r}")
        for name in ("batch_size", "shard_rows"):
            value = getattr(self, name)
            if value is None and name == "batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, not {value!r}")


@dataclass
class EmbedSummary:
    """What a job did. ``rows_*`` are totals for the output; ``new_rows`` were consumed by this run."""

    output: str
    rows_written: int
    rows_skipped: int
    shards: int
    new_rows: int
    seconds: float
    skipped_file: str | None
    already_complete: bool = False
    repaired: list[str] = field(default_factory=list)  # "name: what was wrong" per re-embedded shard
    verified: int = 0  # shards whose checksum was checked (``verify``)

    @property
    def rows_per_second(self) -> float:
        """Input rows consumed per second by this run."""
        return self.new_rows / self.seconds if self.seconds > 0 else 0.0


class Engine(Protocol):
    """Turns input rows into vectors. ``model``/``dtype`` go into the fingerprint."""

    model: str
    dtype: str

    def stream(
        self, reader: CorpusReader, settings: EmbedSettings, start_after: tuple[int, int] | None
    ) -> Iterator[ShardBatch]: ...


def check_rows(records: list[Record], settings: EmbedSettings, files: list[InputFile]) -> None:
    """In ``fail`` mode, raise InputError naming the first bad row (before any work is spent on its shard)."""
    if settings.on_error != "fail":
        return
    for record in records:
        if record.error is not None:
            raise InputError(
                f"{files[record.file].path}: row {record.row}: {record.error} (rows before this "
                "shard are saved; fix the input or rerun with --on-error skip)"
            )


class LocalEngine:
    """Embeds in this process through an encoder (several devices via ``MiniLMEncoder(device="npu:0,npu:1")``).

    Args:
        encoder: An object with the encoder's ``encode`` contract, or a zero-argument factory for one (called
            only when there is work to do).
        model: Model name for the fingerprint; defaults to ``encoder.model_name``.
        dtype: dtype for the fingerprint; defaults to ``encoder.dtype``.
    """

    def __init__(self, encoder: Any, model: str | None = None, dtype: str | None = None):
        self._encoder = encoder if hasattr(encoder, "encode") else None
        self._factory: Callable[[], Any] | None = None if self._encoder is not None else encoder
        self._lock = threading.Lock()  # two shards in flight must not load two models
        self.model = model or getattr(self.encoder, "model_name", type(self.encoder).__name__)
        self.dtype = dtype or getattr(self.encoder, "dtype", "float32")

    @property
    def encoder(self) -> Any:
        """The encoder, built on first use."""
        with self._lock:
            if self._encoder is None:
                self._encoder = self._factory()
            return self._encoder

    def stream(
        self, reader: CorpusReader, settings: EmbedSettings, start_after: tuple[int, int] | None
    ) -> Iterator[ShardBatch]:
        """Shards in order, with the next shard's reading overlapping this one's embedding.

        Two shards are in flight at most: one embedding on the one encoding thread, the next read and queued
        meanwhile. One encoding thread, not two: every thread that runs CPU forwards keeps its own OpenMP worker
        pool, and libgomp stops spin-waiting once the process holds more OpenMP threads than cores (see
        :func:`minilm_npu.devices.release_host_threads`); measured on a 2-core Zen 4, a 3,000-line job took
        9.3-9.7 s with one thread against 9.9-10.5 s with two. A bad row in ``fail`` mode first lets the shards
        before it finish, so they are committed.
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilm-corpus") as pool:
            pending: deque[tuple[list[Record], Future]] = deque()
            try:
                for records in reader.chunks(settings.shard_rows, start_after):
                    check_rows(records, settings, reader.files)
                    pending.append((records, pool.submit(self._embed, records, settings.batch_size)))
                    if len(pending) >= 2:
                        records, future = pending.popleft()
                        yield records, future.result()
            except InputError:
                while pending:
                    records, future = pending.popleft()
                    yield records, future.result()
                raise
            while pending:
                records, future = pending.popleft()
                yield records, future.result()

    def _embed(self, records: list[Record], batch_size: int | None) -> np.ndarray:
        texts = [r.text for r in records if r.error is None]
        if not texts:
            return np.empty((0, getattr(self.encoder, "dimension", 0)), dtype=np.float32)
        vectors = self.encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32)


def _crash_point(stage: str, shard: int) -> None:
    spec = os.environ.get(CRASH_ENV)
    if spec and spec == f"{stage}:{shard}":
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def _writing(layout: Layout) -> Iterator[None]:
    """Turn a failed write (disk full, read-only, permissions) into one clear OutputError."""
    try:
        yield
    except OSError as err:
        try:  # what is on disk is what counts: the manifest in memory may be one shard ahead
            committed = Manifest.load(layout.work)
        except (OSError, InputError):
            committed = None
        saved = (
            f"; the {committed.rows_consumed} rows committed so far are kept"
            if committed is not None and committed.rows_consumed
            else ""
        )
        reason = err.strerror or str(err)
        raise OutputError(
            f"cannot write {layout.output}: {reason}{saved}; free space or fix the permissions, "
            "then rerun the same command"
        ) from err


def _save(layout: Layout, manifest: Manifest) -> None:
    """The commit: atomically replace the manifest."""
    manifest.save(layout.work, before_commit=lambda: _crash_point("manifest-tmp", len(manifest.shards)))


def _prepare(layout: Layout, fingerprint: dict, settings: EmbedSettings, engine: str) -> Manifest:
    """Under the lock: the manifest to continue from, or a new job's first manifest (written before any shard)."""
    manifest = None if settings.overwrite else Manifest.load(layout.work)
    if manifest is not None:
        change = describe_change(manifest.fingerprint, fingerprint)
        if change:
            raise InputError(
                f"{layout.output}: {change} since this output was started; rerun with --overwrite "
                "to start again, or choose another output"
            )
        return manifest
    layout.check_new(settings.overwrite)
    manifest = Manifest(fingerprint=fingerprint, dimension=0, engine=engine)
    with _writing(layout):
        layout.clear()
        _save(layout, manifest)
    return manifest


def embed_corpus(
    inputs: str | os.PathLike | list, output: str | os.PathLike, engine: Engine, settings: EmbedSettings | None = None
) -> EmbedSummary:
    """Embed every row of ``inputs`` into ``output``, resuming a killed run of the same job.

    Args:
        inputs: A file, a directory of files, or a list of files (see :mod:`.readers` for formats).
        output: A directory for a Parquet dataset (``part-NNNNNN.parquet`` + ``_manifest.json``), or a path
            ending in ``.npy`` for one float32 array (small jobs).
        engine: :class:`LocalEngine` or :class:`~minilm_npu.corpus.ray_engine.RayEngine`.
        settings: Job options.

    Returns:
        An :class:`EmbedSummary`.

    Raises:
        InputError: bad input or settings, a bad row in ``fail`` mode, or an output from a different job.
    """
    settings = settings or EmbedSettings()
    settings.validate()
    started = time.perf_counter()
    files = expand_inputs(inputs)
    layout = Layout(output)
    fingerprint = job_fingerprint(
        files,
        engine.model,
        engine.dtype,
        {
            "text_field": settings.text_field,
            "id_field": settings.id_field,
            "keep_text": settings.keep_text,
            "output": "npy" if layout.npy else "parquet",
        },
    )
    layout.check_new(settings.overwrite)  # before creating anything: a foreign directory stays untouched
    with _writing(layout):  # an output that cannot be created fails here, before any model loads
        layout.work.make()
        lock = acquire_lock(layout.work, layout.output)  # flock locally, a lease on object storage
    with lock:
        return _embed_locked(layout, fingerprint, files, engine, settings, started)


def _embed_locked(
    layout: Layout, fingerprint: dict, files: list[InputFile], engine: Engine, settings: EmbedSettings, started: float
) -> EmbedSummary:
    """The job, with the output's lock held."""
    _crash_point("locked", 0)
    manifest = _prepare(layout, fingerprint, settings, type(engine).__name__)
    with _writing(layout):
        layout.tidy(manifest)
    reader = CorpusReader(files, settings.text_field, settings.id_field)
    repaired = _repair(layout, manifest, engine, reader, settings)
    consumed_before, was_complete = manifest.rows_consumed, manifest.complete
    if not manifest.complete:
        if hasattr(engine, "write_shards"):  # workers write the shards; this process only commits them
            reports = engine.write_shards(reader, settings, _cursor(manifest), layout.work, _resume_offset(manifest))
            _run_reports(layout, manifest, reports, settings, files)
        else:
            _run(layout, manifest, engine.stream(reader, settings, _cursor(manifest)), settings, files)
    if layout.npy:
        with _writing(layout):
            _finish_npy(layout, manifest)
    already_complete = was_complete and not layout.npy and not repaired
    summary = _summary(layout, manifest, manifest.rows_consumed - consumed_before, started, already_complete)
    summary.repaired = repaired
    summary.verified = sum(1 for s in manifest.shards if s.get("sha256")) if settings.verify else 0
    return summary


def _repair(
    layout: Layout, manifest: Manifest, engine: Engine, reader: CorpusReader, settings: EmbedSettings
) -> list[str]:
    """Check the committed shards (checksums too with ``verify``) and re-embed each damaged one in place."""
    repaired = []
    for index, problem in check_shards(layout.work, manifest.shards, checksum=settings.verify):
        name = manifest.shards[index]["file"]
        log.warning("%s: %s; re-embedding this shard", layout.work.describe(name), problem)
        records, vectors = reembed_shard(engine, reader, settings, manifest.shards, index)
        with _writing(layout):
            written = write_shard(
                layout.work,
                index,
                [r.id for r in records if r.error is None],
                vectors,
                [r.text for r in records if r.error is None] if settings.keep_text else None,
                name=name,
            )  # the committed name (a Ray shard's is not index-based)
            manifest.shards[index].update(bytes=written.bytes, sha256=written.sha256)
            _save(layout, manifest)
        repaired.append(f"{name}: {problem}")
    return repaired


def _cursor(manifest: Manifest) -> tuple[int, int] | None:
    return tuple(manifest.cursor) if manifest.cursor else None


def _resume_offset(manifest: Manifest) -> int | None:
    """The byte offset just after the cursor's row, when the last shard recorded the bytes its unit read."""
    last = manifest.shards[-1] if manifest.shards else {}
    return last["input_bytes"][1] if last.get("input_bytes") and last.get("end") == manifest.cursor else None


@contextlib.contextmanager
def _committing(layout: Layout, manifest: Manifest, settings: EmbedSettings, files: list[InputFile]):
    """The progress bar and the skipped-rows side file around a commit loop; marks the job complete after it."""
    show = settings.progress if settings.progress is not None else sys.stderr.isatty()
    total = count_rows(files) if show else None
    with _writing(layout):
        side = layout.work.append_file(SKIPPED_NAME)  # closed below, after the loop
    with (
        tqdm(
            total=total,
            initial=manifest.rows_consumed,
            unit="row",
            desc="embed",
            disable=not show,
            dynamic_ncols=True,
            smoothing=0.1,
        ) as bar,
        side,
    ):
        yield bar, side
    manifest.complete = True
    with _writing(layout):
        _save(layout, manifest)


def _run(
    layout: Layout, manifest: Manifest, stream: Iterator[ShardBatch], settings: EmbedSettings, files: list[InputFile]
) -> None:
    with _committing(layout, manifest, settings, files) as (bar, side):
        for records, vectors in stream:
            check_rows(records, settings, files)
            with _writing(layout):
                _commit_shard(layout, manifest, records, vectors, settings, files, side)
            bar.update(len(records))


def _commit_shard(
    layout: Layout,
    manifest: Manifest,
    records: list[Record],
    vectors: np.ndarray,
    settings: EmbedSettings,
    files: list[InputFile],
    side,
) -> None:
    good = [r for r in records if r.error is None]
    bad = [r for r in records if r.error is not None]
    if len(good) != len(vectors):
        raise RuntimeError(f"engine returned {len(vectors)} vectors for {len(good)} rows")
    index = len(manifest.shards)
    if manifest.dimension == 0 and vectors.ndim == 2:
        manifest.dimension = int(vectors.shape[1])
    _crash_point("before-shard", index)
    last = records[-1]
    entry = {"file": None, "rows": len(good), "skipped": len(bad), "end": [last.file, last.row]}
    if good:
        written = write_shard(
            layout.work,
            index,
            [r.id for r in good],
            vectors,
            [r.text for r in good] if settings.keep_text else None,
            before_commit=lambda: _crash_point("shard-tmp", index),
        )
        entry.update(file=written.file, bytes=written.bytes, sha256=written.sha256)
    _crash_point("after-shard", index)
    if bad:
        lines = b"".join(
            (
                json.dumps(
                    {"file": str(files[r.file].path), "row": r.row, "id": r.id, "error": r.error}, ensure_ascii=False
                )
                + "\n"
            ).encode("utf-8")
            for r in bad
        )
        side.write(lines[: len(lines) // 2])
        side.flush()
        _crash_point("skipped-partial", index)  # a torn line: the resumed job truncates it away
        side.write(lines[len(lines) // 2 :])
        side.flush()
        side.sync()
        _crash_point("after-skipped", index)
    manifest.shards.append(entry)
    manifest.cursor = [last.file, last.row]
    manifest.rows_written += len(good)
    manifest.rows_skipped += len(bad)
    manifest.skipped_bytes = side.tell()
    _save(layout, manifest)
    _crash_point("after-manifest", index)


def _run_reports(
    layout: Layout, manifest: Manifest, reports: Iterator[Any], settings: EmbedSettings, files: list[InputFile]
) -> None:
    """Commit shards that workers wrote (see :class:`~minilm_npu.corpus.ray_engine.ShardReport`), in input order.

    The shard is already in the output directory under its final name; it becomes part of the output only when
    the manifest listing it is replaced, so a crash before that leaves an unlisted file that the next run deletes.
    """
    with _committing(layout, manifest, settings, files) as (bar, side):
        for report in reports:
            if report.bad and settings.on_error == "fail":
                row, _, error = report.bad[0]
                raise InputError(
                    f"{files[report.file].path}: row {row}: {error} (rows before this shard are "
                    "saved; fix the input or rerun with --on-error skip)"
                )
            with _writing(layout):
                _commit_report(layout, manifest, report, files, side)
            bar.update(report.rows + len(report.bad))
    with _writing(layout):
        layout.tidy(manifest)  # a worker lost mid-unit may have left a temporary file; its retry wrote the shard


def _commit_report(layout: Layout, manifest: Manifest, report: Any, files: list[InputFile], side) -> None:
    index = len(manifest.shards)
    if manifest.dimension == 0 and report.dimension:
        manifest.dimension = report.dimension
    _crash_point("after-shard", index)
    if report.bad:
        side.write(
            b"".join(
                (
                    json.dumps(
                        {"file": str(files[report.file].path), "row": row, "id": ident, "error": error},
                        ensure_ascii=False,
                    )
                    + "\n"
                ).encode("utf-8")
                for row, ident, error in report.bad
            )
        )
        side.flush()
        side.sync()
    end = [report.file, report.last if report.eof else report.hi]
    # The shard's input range: rows ``start < row <= end`` (and the bytes its unit read, where it had a range).
    entry = {
        "file": report.name,
        "rows": report.rows,
        "skipped": len(report.bad),
        "start": [report.file, report.lo],
        "end": end,
    }
    if report.input_bytes:
        entry["input_bytes"] = list(report.input_bytes)
    if report.name:
        entry.update(bytes=report.size, sha256=report.sha256)
    manifest.shards.append(entry)
    manifest.cursor = end
    manifest.rows_written += report.rows
    manifest.rows_skipped += len(report.bad)
    manifest.skipped_bytes = side.tell()
    _save(layout, manifest)
    _crash_point("after-manifest", index)


def _finish_npy(layout: Layout, manifest: Manifest) -> None:
    shards = [layout.work / s["file"] for s in manifest.shards if s.get("file")]
    assemble_npy(shards, layout.output, manifest.dimension, manifest.rows_written)
    _crash_point("npy-written", 0)
    skipped = layout.work / SKIPPED_NAME
    if manifest.rows_skipped and skipped.exists():  # a run killed after this move finds it done already
        os.replace(skipped, layout.skipped_final)
    _crash_point("npy-moved", 0)
    layout.work.remove()  # lock file included: the lock is released when this job closes it


def _summary(
    layout: Layout, manifest: Manifest | None, new_rows: int, started: float, already_complete: bool = False
) -> EmbedSummary:
    manifest = manifest or Manifest(fingerprint={}, dimension=0)
    skipped = layout.skipped_final if manifest.rows_skipped else None
    if not layout.npy and not manifest.rows_skipped:
        layout.work.delete(SKIPPED_NAME)
    return EmbedSummary(
        output=str(layout.output),
        rows_written=manifest.rows_written,
        rows_skipped=manifest.rows_skipped,
        shards=sum(1 for s in manifest.shards if s["file"]),
        new_rows=new_rows,
        seconds=time.perf_counter() - started,
        skipped_file=str(skipped) if skipped else None,
        already_complete=already_complete,
    )
