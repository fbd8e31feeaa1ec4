"""The resumable embedding job: input rows in, Parquet shards (or one ``.npy``) out, every row exactly once.

The loop reads a shard's worth of rows, embeds the good ones, writes the shard atomically, appends any skipped
rows to the side file, and only then commits by atomically replacing the manifest. After ``kill -9`` at any point
the manifest still describes a consistent prefix of the input; the next run deletes what was written after it and
continues from the manifest's cursor. Engines (in-process encoder, Ray) only supply the embedded rows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from .manifest import MANIFEST_NAME, SKIPPED_NAME, Manifest, describe_change, job_fingerprint
from .readers import CorpusReader, InputFile, Record, count_rows, expand_inputs
from .writer import TMP_SUFFIX, assemble_npy, write_shard

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")
#: Rows per shard: the most work a crash can lose, and the unit handed to the encoder at once.
DEFAULT_SHARD_ROWS = 8192
#: Fault injection for the kill-and-resume tests: ``STAGE:SHARD`` (stages: before-shard, after-shard,
#: after-manifest) makes the process SIGKILL itself at that point, so the worst moments are hit exactly.
CRASH_ENV = "MINILM_NPU_CORPUS_CRASH"

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

    @property
    def rows_per_second(self) -> float:
        """Input rows consumed per second by this run."""
        return self.new_rows / self.seconds if self.seconds > 0 else 0.0


class Engine(Protocol):
    """Turns input rows into vectors. ``model``/``dtype`` go into the fingerprint."""

    model: str
    dtype: str

    def stream(self, reader: CorpusReader, settings: EmbedSettings,
               start_after: tuple[int, int] | None) -> Iterator[ShardBatch]: ...


def check_rows(records: list[Record], settings: EmbedSettings, files: list[InputFile]) -> None:
    """In ``fail`` mode, raise InputError naming the first bad row (before any work is spent on its shard)."""
    if settings.on_error != "fail":
        return
    for record in records:
        if record.error is not None:
            raise InputError(f"{files[record.file].path}: row {record.row}: {record.error} (rows before this "
                             "shard are saved; fix the input or rerun with --on-error skip)")


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

    def stream(self, reader: CorpusReader, settings: EmbedSettings,
               start_after: tuple[int, int] | None) -> Iterator[ShardBatch]:
        """Shards in order, with the next shard's tokenization and reading overlapping this one's forward passes.

        Two shards are in flight at most (``encode`` is thread-safe; the device workers' locks serialise the
        compute). A bad row in ``fail`` mode first lets the shards before it finish, so they are committed.
        """
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="minilm-corpus") as pool:
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


class _Layout:
    """Where things go: a dataset directory, or for ``.npy`` a ``<name>.partial`` work directory."""

    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)
        self.npy = self.output.suffix.lower() == ".npy"
        self.work = self.output.with_name(self.output.name + ".partial") if self.npy else self.output
        self.skipped_final = (self.output.with_name(self.output.name + ".skipped.jsonl") if self.npy
                              else self.work / SKIPPED_NAME)

    @staticmethod
    def ours(name: str) -> bool:
        base = name[:-len(TMP_SUFFIX)] if name.endswith(TMP_SUFFIX) else name
        return base in (MANIFEST_NAME, SKIPPED_NAME) or (base.startswith("part-") and base.endswith(".parquet"))

    def clear(self) -> None:
        """Delete what an earlier job wrote (and only that)."""
        if self.npy:
            for path in (self.output, self.skipped_final):
                path.unlink(missing_ok=True)
        if self.work.is_dir():
            foreign = [p.name for p in self.work.iterdir() if not self.ours(p.name)]
            if foreign:
                raise InputError(f"{self.work}: holds files minilm-npu did not write ({', '.join(foreign[:3])}); "
                                 "choose an empty or new output directory")
            for path in self.work.iterdir():
                path.unlink()
            if self.npy:
                self.work.rmdir()


def _crash_point(stage: str, shard: int) -> None:
    spec = os.environ.get(CRASH_ENV)
    if spec and spec == f"{stage}:{shard}":
        os.kill(os.getpid(), signal.SIGKILL)


def _prepare(layout: _Layout, fingerprint: dict, settings: EmbedSettings, engine: str) -> Manifest | None:
    """The manifest to continue from (a fresh one to start), or None when the output is already complete."""
    if layout.npy and layout.output.exists() and not layout.work.exists():
        if not settings.overwrite:
            raise InputError(f"{layout.output} already exists; rerun with --overwrite to replace it")
        layout.clear()
    if layout.work.exists() and not layout.work.is_dir():
        raise InputError(f"{layout.work} exists and is not a directory; choose another output")
    manifest = Manifest.load(layout.work) if layout.work.is_dir() and not settings.overwrite else None
    if manifest is not None:
        change = describe_change(manifest.fingerprint, fingerprint)
        if change:
            raise InputError(f"{layout.output}: {change} since this output was started; rerun with --overwrite "
                             "to start again, or choose another output")
        if manifest.complete and not layout.npy:
            return None
        return manifest
    if layout.work.is_dir() and any(layout.work.iterdir()):
        if not settings.overwrite:
            raise InputError(f"{layout.work}: directory is not empty and holds no minilm-npu manifest; choose "
                             "an empty or new output, or rerun with --overwrite")
        layout.clear()
    layout.work.mkdir(parents=True, exist_ok=True)
    return Manifest(fingerprint=fingerprint, dimension=0, engine=engine)


def _tidy(layout: _Layout, manifest: Manifest) -> None:
    """Drop what a killed run wrote after its last commit: temp files, unlisted shards, uncommitted skips."""
    listed = {s["file"] for s in manifest.shards if s.get("file")}
    for path in layout.work.iterdir():
        if path.name.endswith(TMP_SUFFIX) or (path.name.startswith("part-") and path.name not in listed):
            path.unlink()
    skipped = layout.work / SKIPPED_NAME
    if skipped.exists():
        with open(skipped, "rb+") as handle:
            handle.truncate(manifest.skipped_bytes)


def embed_corpus(inputs: str | os.PathLike | list, output: str | os.PathLike, engine: Engine,
                 settings: EmbedSettings | None = None) -> EmbedSummary:
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
    layout = _Layout(output)
    fingerprint = job_fingerprint(files, engine.model, engine.dtype, {
        "text_field": settings.text_field, "id_field": settings.id_field, "keep_text": settings.keep_text,
        "output": "npy" if layout.npy else "parquet"})
    manifest = _prepare(layout, fingerprint, settings, type(engine).__name__)
    if manifest is None:
        done = Manifest.load(layout.work)
        return _summary(layout, done, 0, started, already_complete=True)
    _tidy(layout, manifest)
    consumed_before = manifest.rows_consumed
    if not manifest.complete:
        reader = CorpusReader(files, settings.text_field, settings.id_field)
        _run(layout, manifest, engine.stream(reader, settings, _cursor(manifest)), settings, files)
    if layout.npy:
        _finish_npy(layout, manifest)
    return _summary(layout, manifest, manifest.rows_consumed - consumed_before, started)


def _cursor(manifest: Manifest) -> tuple[int, int] | None:
    return tuple(manifest.cursor) if manifest.cursor else None


def _run(layout: _Layout, manifest: Manifest, stream: Iterator[ShardBatch], settings: EmbedSettings,
         files: list[InputFile]) -> None:
    show = settings.progress if settings.progress is not None else sys.stderr.isatty()
    total = count_rows(files) if show else None
    with tqdm(total=total, initial=manifest.rows_consumed, unit="row", desc="embed", disable=not show,
              dynamic_ncols=True, smoothing=0.1) as bar, open(layout.work / SKIPPED_NAME, "ab") as side:
        for records, vectors in stream:
            check_rows(records, settings, files)
            _commit_shard(layout, manifest, records, vectors, settings, files, side)
            bar.update(len(records))
    manifest.complete = True
    manifest.save(layout.work)


def _commit_shard(layout: _Layout, manifest: Manifest, records: list[Record], vectors: np.ndarray,
                  settings: EmbedSettings, files: list[InputFile], side) -> None:
    good = [r for r in records if r.error is None]
    bad = [r for r in records if r.error is not None]
    if len(good) != len(vectors):
        raise RuntimeError(f"engine returned {len(vectors)} vectors for {len(good)} rows")
    index = len(manifest.shards)
    if manifest.dimension == 0 and vectors.ndim == 2:
        manifest.dimension = int(vectors.shape[1])
    _crash_point("before-shard", index)
    name = None
    if good:
        name = write_shard(layout.work, index, [r.id for r in good], vectors,
                           [r.text for r in good] if settings.keep_text else None)
    _crash_point("after-shard", index)
    if bad:
        for r in bad:
            line = {"file": str(files[r.file].path), "row": r.row, "id": r.id, "error": r.error}
            side.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        side.flush()
        os.fsync(side.fileno())
    last = records[-1]
    manifest.shards.append({"file": name, "rows": len(good), "skipped": len(bad), "end": [last.file, last.row]})
    manifest.cursor = [last.file, last.row]
    manifest.rows_written += len(good)
    manifest.rows_skipped += len(bad)
    manifest.skipped_bytes = side.tell()
    manifest.save(layout.work)
    _crash_point("after-manifest", index)


def _finish_npy(layout: _Layout, manifest: Manifest) -> None:
    shards = [layout.work / s["file"] for s in manifest.shards if s.get("file")]
    assemble_npy(shards, layout.output, manifest.dimension, manifest.rows_written)
    skipped = layout.work / SKIPPED_NAME
    if manifest.rows_skipped:
        os.replace(skipped, layout.skipped_final)
    shutil.rmtree(layout.work)


def _summary(layout: _Layout, manifest: Manifest | None, new_rows: int, started: float,
             already_complete: bool = False) -> EmbedSummary:
    manifest = manifest or Manifest(fingerprint={}, dimension=0)
    skipped = layout.skipped_final if manifest.rows_skipped else None
    if not layout.npy and not manifest.rows_skipped:
        (layout.work / SKIPPED_NAME).unlink(missing_ok=True)
    return EmbedSummary(output=str(layout.output), rows_written=manifest.rows_written,
                        rows_skipped=manifest.rows_skipped, shards=sum(1 for s in manifest.shards if s["file"]),
                        new_rows=new_rows, seconds=time.perf_counter() - started,
                        skipped_file=str(skipped) if skipped else None, already_complete=already_complete)
