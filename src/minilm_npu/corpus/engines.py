"""What the corpus job asks of an engine, and the job's settings every engine is handed.

An engine turns input rows into vectors. Every engine can :meth:`~Engine.stream` a shard's rows with their vectors
(the job writes them, and re-embeds a damaged shard that way); an engine whose workers write their shards
themselves (Ray: no vector ever reaches the driver) is a :class:`ShardWriter` as well. Either way the job commits
one :class:`WrittenShard` at a time, in input order, through one commit path.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import InputError
from .inputs import InputFile
from .manifest import ShardEntry
from .readers import CorpusReader, Record

ON_ERROR = ("fail", "skip")
#: Rows per shard: the most work a crash can lose, and the unit handed to the encoder at once.
DEFAULT_SHARD_ROWS = 8192

#: What :meth:`Engine.stream` yields per shard: the shard's input rows (good and bad, in order) and the good rows'
#: vectors.
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

    def check_rows(self, records: Sequence[Record], files: Sequence[InputFile]) -> None:
        """In ``fail`` mode, raise InputError naming the first bad row of ``records`` (the one place that says
        so, whichever engine found it; the local engine asks before it spends work on the shard)."""
        if self.on_error != "fail":
            return
        for record in records:
            if record.error is not None:
                raise InputError(
                    f"{files[record.file].path}: row {record.row}: {record.error} (rows before this "
                    "shard are saved; fix the input or rerun with --on-error skip)"
                )


@dataclass
class WrittenShard:
    """A shard whose file (if any) is written under its final name and not yet committed.

    Attributes:
        entry: What the manifest will list for it.
        bad: The bad rows of its range, in order (they go to the skipped-rows file).
        dimension: Embedding width (0 when the shard has no vectors).
    """

    entry: ShardEntry
    bad: list[Record]
    dimension: int


class Engine(Protocol):
    """Turns input rows into vectors. ``model``/``dtype`` go into the job's fingerprint."""

    model: str
    dtype: str

    def stream(
        self, reader: CorpusReader, settings: EmbedSettings, start_after: tuple[int, int] | None
    ) -> Generator[ShardBatch, None, None]:
        """Shards of at most ``settings.shard_rows`` rows after ``start_after``, in input order, as rows and
        vectors; in ``fail`` mode it stops (InputError) at the first bad row, after the shards before it."""


@runtime_checkable
class ShardWriter(Engine, Protocol):
    """An engine whose workers write the shards themselves; the job only commits them."""

    def write_shards(
        self,
        reader: CorpusReader,
        settings: EmbedSettings,
        start_after: tuple[int, int] | None,
        output: str,
        offset: int | None = None,
    ) -> Iterator[WrittenShard]:
        """The shards after ``start_after``, in input order, already written into ``output`` (a path or URI).

        ``offset`` is the byte offset just after ``start_after``'s row where the manifest recorded it, so a text
        file's plan can start there (:func:`~minilm_npu.corpus.units.plan_units`).
        """
