"""The resumable embedding job: input rows in, Parquet shards (or one ``.npy``) out, every row exactly once.

The job first takes the output's lock (one writer at a time) and writes its manifest, before any other file of
its own, so a directory it touched is always recognisably its own. Then the loop reads a shard's worth of rows,
embeds the good ones, writes the shard atomically (recording its size and checksum), appends any skipped rows to
the side file, and only then commits by atomically replacing the manifest. After ``kill -9`` at any point the
manifest still describes a consistent prefix of the input; the next run checks the committed shards, deletes what
was written after the last commit and continues from the manifest's cursor. Engines only supply the shards — the
local one rows and vectors, which the job writes; Ray's workers write their own — and every shard is committed
through one path (:func:`_commit`), under the lock the job holds whatever the engine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError, OutputError
from .directory import AppendFile
from .engines import DEFAULT_SHARD_ROWS, EmbedSettings, Engine, ShardWriter, WrittenShard
from .inputs import InputFile, expand_inputs
from .layout import Layout
from .local_engine import LocalEngine
from .localdir import LocalDirectory
from .lock import acquire_lock
from .manifest import SKIPPED_NAME, Manifest, ShardEntry, describe_change, job_fingerprint
from .readers import CorpusReader, Record
from .repair import check_shards, reembed_shard
from .units import count_rows
from .writer import assemble_npy, write_records

# EmbedSettings, Engine and LocalEngine are imported from here by the job's users, beside what is defined here.
__all__ = ["CRASH_ENV", "CRASH_STAGES", "DEFAULT_SHARD_ROWS", "EmbedSettings", "EmbedSummary", "Engine"]
__all__ += ["LocalEngine", "embed_corpus"]

log = logging.getLogger(__name__)

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
        _run(layout, manifest, _written_shards(layout, manifest, engine, reader, settings), settings, files)
    if layout.npy:
        with _writing(layout):
            _finish_npy(layout, manifest)
    already_complete = was_complete and not layout.npy and not repaired
    summary = _summary(layout, manifest, manifest.rows_consumed - consumed_before, started, already_complete)
    summary.repaired = repaired
    summary.verified = sum(1 for s in manifest.shards if s.sha256) if settings.verify else 0
    return summary


def _repair(
    layout: Layout, manifest: Manifest, engine: Engine, reader: CorpusReader, settings: EmbedSettings
) -> list[str]:
    """Check the committed shards (checksums too with ``verify``) and re-embed each damaged one in place."""
    repaired = []
    for index, problem in check_shards(layout.work, manifest.shards, checksum=settings.verify):
        entry = manifest.shards[index]
        name = entry.file
        assert name is not None  # only shards with a file are checked
        log.warning("%s: %s; re-embedding this shard", layout.work.describe(name), problem)
        records, vectors = reembed_shard(engine, reader, settings, manifest.shards, index)
        good = [r for r in records if r.error is None]
        with _writing(layout):  # under the committed name (a Ray shard's is not index-based)
            written = write_records(layout.work, index, good, vectors, settings.keep_text, name=name)
            entry.bytes, entry.sha256 = written.bytes, written.sha256
            _save(layout, manifest)
        repaired.append(f"{name}: {problem}")
    return repaired


def _cursor(manifest: Manifest) -> tuple[int, int] | None:
    return (manifest.cursor[0], manifest.cursor[1]) if manifest.cursor else None


def _resume_offset(manifest: Manifest) -> int | None:
    """The byte offset just after the cursor's row, when the last shard recorded the bytes its unit read."""
    last = manifest.shards[-1] if manifest.shards else None
    return last.input_bytes[1] if last and last.input_bytes and last.end == manifest.cursor else None


def _written_shards(
    layout: Layout, manifest: Manifest, engine: Engine, reader: CorpusReader, settings: EmbedSettings
) -> Iterator[WrittenShard]:
    """The shards after the manifest's cursor, written and in input order: by the engine's own workers where it
    writes them (Ray), else here, from the rows and vectors it streams, each just before it is committed."""
    if isinstance(engine, ShardWriter):
        yield from engine.write_shards(reader, settings, _cursor(manifest), layout.work.uri, _resume_offset(manifest))
        return
    for records, vectors in engine.stream(reader, settings, _cursor(manifest)):
        settings.check_rows(records, reader.files)  # before the shard is written: nothing to clean up after
        with _writing(layout):
            shard = _write_shard(layout, len(manifest.shards), records, vectors, settings)
        yield shard


def _write_shard(
    layout: Layout, index: int, records: list[Record], vectors: np.ndarray, settings: EmbedSettings
) -> WrittenShard:
    """Write the good rows of one streamed shard as shard ``index`` (not yet committed)."""
    good = [r for r in records if r.error is None]
    bad = [r for r in records if r.error is not None]
    if len(good) != len(vectors):
        raise RuntimeError(f"engine returned {len(vectors)} vectors for {len(good)} rows")
    _crash_point("before-shard", index)
    last = records[-1]
    entry = ShardEntry(file=None, rows=len(good), skipped=len(bad), end=[last.file, last.row])
    if good:
        crash = lambda: _crash_point("shard-tmp", index)  # noqa: E731 - written and synced, not yet visible
        written = write_records(layout.work, index, good, vectors, settings.keep_text, before_commit=crash)
        entry.file, entry.bytes, entry.sha256 = written.file, written.bytes, written.sha256
    return WrittenShard(entry, bad, int(vectors.shape[1]) if vectors.ndim == 2 else 0)


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
    layout: Layout, manifest: Manifest, shards: Iterator[WrittenShard], settings: EmbedSettings, files: list[InputFile]
) -> None:
    """Commit each written shard, in input order; a shard is part of the output once the manifest lists it.

    A shard's file is already in the output directory under its final name; a crash before its commit leaves an
    unlisted file that the next run deletes, and so does the tidy after the loop for what a worker lost mid-unit
    left behind (its retry wrote the shard).
    """
    with _committing(layout, manifest, settings, files) as (bar, side):
        for shard in shards:
            settings.check_rows(shard.bad, files)
            with _writing(layout):
                _commit(layout, manifest, shard, files, side)
            bar.update(shard.entry.rows + shard.entry.skipped)
    with _writing(layout):
        layout.tidy(manifest)


def _commit(layout: Layout, manifest: Manifest, shard: WrittenShard, files: list[InputFile], side: AppendFile) -> None:
    """The one commit path: the shard's bad rows to the side file, then the manifest that lists the shard."""
    index = len(manifest.shards)
    if manifest.dimension == 0 and shard.dimension:
        manifest.dimension = shard.dimension
    _crash_point("after-shard", index)
    if shard.bad:
        lines = _skipped_lines(shard.bad, files)
        side.write(lines[: len(lines) // 2])
        side.flush()
        _crash_point("skipped-partial", index)  # a torn line: the resumed job truncates it away
        side.write(lines[len(lines) // 2 :])
        side.flush()
        side.sync()
        _crash_point("after-skipped", index)
    manifest.append(shard.entry, skipped_bytes=side.tell())
    _save(layout, manifest)
    _crash_point("after-manifest", index)


def _skipped_lines(bad: Sequence[Record], files: Sequence[InputFile]) -> bytes:
    """One JSON line per bad row: its file, row, id and what is wrong with it."""
    return b"".join(
        (
            json.dumps(
                {"file": str(files[r.file].path), "row": r.row, "id": r.id, "error": r.error}, ensure_ascii=False
            )
            + "\n"
        ).encode("utf-8")
        for r in bad
    )


def _finish_npy(layout: Layout, manifest: Manifest) -> None:
    work = layout.work
    assert isinstance(work, LocalDirectory)  # a .npy output is local (Layout refuses a URI)
    shards = [work / s.file for s in manifest.shards if s.file]
    assemble_npy(shards, Path(layout.output), manifest.dimension, manifest.rows_written)
    _crash_point("npy-written", 0)
    skipped = work / SKIPPED_NAME
    if manifest.rows_skipped and skipped.exists():  # a run killed after this move finds it done already
        os.replace(skipped, layout.skipped_final)
    _crash_point("npy-moved", 0)
    work.remove()  # lock file included: the lock is released when this job closes it


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
        shards=sum(1 for s in manifest.shards if s.file),
        new_rows=new_rows,
        seconds=time.perf_counter() - started,
        skipped_file=str(skipped) if skipped else None,
        already_complete=already_complete,
    )
