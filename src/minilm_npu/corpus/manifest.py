"""The manifest: what a (partial) output holds, and the fingerprint that says whether it can be resumed.

The manifest is the single commit point of a job. A shard exists for the job only once the manifest that lists it
has been atomically replaced; anything on disk that the manifest does not list is left over from a killed run and
is rewritten on resume.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import InputError
from .directory import DirectorySpec, open_directory
from .inputs import InputFile
from .storage import BeforeCommit, RemotePath, open_input
from .writer import write_json_atomic

MANIFEST_NAME = "_manifest.json"
SKIPPED_NAME = "_skipped.jsonl"
FORMAT = "minilm-npu-corpus/1"
#: Bytes hashed at the start of every input file: catches edits that keep the size and mtime.
HEAD_BYTES = 1 << 20


def file_fingerprint(path: Path | RemotePath) -> dict:
    """Size, mtime and a SHA-256 of the first MiB of one file (local, or an object on object storage)."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open_input(path) as handle:
        digest.update(handle.read(HEAD_BYTES))
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "head_sha256": digest.hexdigest(),
    }


def job_fingerprint(files: list[InputFile], model: str, dtype: str, settings: dict) -> dict:
    """Everything that changes the output's content: input files, model, dtype and row-shaping settings.

    Not included on purpose: device, batch size, backend and ``--on-error`` — switching ``fail`` to ``skip``
    after a bad row is the normal way to continue a stopped job, and the others do not change which rows are
    written (vectors agree to float32 rounding across them).
    """
    return {"inputs": [file_fingerprint(f.path) for f in files], "model": model, "dtype": dtype, "settings": settings}


def describe_change(old: dict, new: dict) -> str | None:
    """A short phrase for the first difference between two fingerprints, or None when they match."""
    if old == new:
        return None
    old_inputs, new_inputs = old.get("inputs", []), new.get("inputs", [])
    if [i["path"] for i in old_inputs] != [i["path"] for i in new_inputs]:
        return "the list of input files changed"
    for before, after in zip(old_inputs, new_inputs):
        for key, what in (("size", "size"), ("head_sha256", "content"), ("mtime_ns", "modification time")):
            if before.get(key) != after.get(key):
                return f"input {after['path']} changed ({what})"
    for key in ("model", "dtype"):
        if old.get(key) != new.get(key):
            return f"{key} changed ({old.get(key)} -> {new.get(key)})"
    for key in sorted(set(old.get("settings", {})) | set(new.get("settings", {}))):
        before, after = old.get("settings", {}).get(key), new.get("settings", {}).get(key)
        if before != after:
            return f"setting {key} changed ({before!r} -> {after!r})"
    return "the job settings changed"


@dataclass
class ShardEntry:
    """One committed shard, as the manifest lists it: which input rows it covers and what was written.

    Attributes:
        file: The shard's file name; None when every row in its range was bad (nothing written).
        rows: Rows written to the shard.
        skipped: Bad rows in its range (listed in the skipped-rows file).
        end: ``[file, row]`` of the last input row the shard covers (the job's cursor after it).
        start: ``[file, row]`` the shard's rows follow (rows ``start < row <= end``), where the engine planned the
            range (Ray); None where the shard simply follows the one before it.
        input_bytes: ``[start, stop)`` byte offsets of the unit read, for a ``.txt``/``.jsonl`` byte-range unit:
            a resumed job plans from ``stop`` instead of scanning the file again.
        bytes / sha256: Size and SHA-256 of the shard's bytes as written, so a rerun can tell a damaged shard
            (None for a shard without a file, and in manifests written before they were recorded).
    """

    file: str | None
    rows: int
    skipped: int
    end: list[int]
    start: list[int] | None = None
    input_bytes: list[int] | None = None
    bytes: int | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as the manifest's JSON holds it: ``file``, ``rows`` and ``skipped`` always, the rest when
        known (``bytes``/``sha256`` for a shard with a file)."""
        data: dict[str, Any] = {"file": self.file, "rows": self.rows, "skipped": self.skipped}
        if self.start is not None:
            data["start"] = list(self.start)
        data["end"] = list(self.end)
        for name in ("input_bytes", "bytes", "sha256"):
            value = getattr(self, name)
            if value is not None:
                data[name] = list(value) if isinstance(value, (list, tuple)) else value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardEntry:
        """An entry from the manifest's JSON (keys it does not know are ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class Manifest:
    """State of one output directory.

    Attributes:
        fingerprint: From :func:`job_fingerprint`.
        dimension: Embedding width.
        shards: One :class:`ShardEntry` per committed shard, in input order.
        cursor: ``[file, row]`` of the last input row consumed, None before the first shard.
        rows_written / rows_skipped: Totals over ``shards``.
        skipped_bytes: Committed length of the skipped-rows side file; a resumed job truncates it to this.
        complete: The whole input has been consumed.
    """

    fingerprint: dict
    dimension: int
    shards: list[ShardEntry] = field(default_factory=list)
    cursor: list[int] | None = None
    rows_written: int = 0
    rows_skipped: int = 0
    skipped_bytes: int = 0
    complete: bool = False
    engine: str = "local"
    format: str = FORMAT
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @property
    def rows_consumed(self) -> int:
        """Input rows dealt with so far, written or skipped."""
        return self.rows_written + self.rows_skipped

    def append(self, entry: ShardEntry, skipped_bytes: int) -> None:
        """Add a shard: the cursor moves to its end and the totals grow (saved by :meth:`save`)."""
        self.shards.append(entry)
        self.cursor = list(entry.end)
        self.rows_written += entry.rows
        self.rows_skipped += entry.skipped
        self.skipped_bytes = skipped_bytes

    def to_dict(self) -> dict[str, Any]:
        """The manifest as its JSON file holds it."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["shards"] = [entry.to_dict() for entry in self.shards]
        return data

    def save(self, directory: DirectorySpec, before_commit: BeforeCommit = None) -> None:
        """Atomically replace the manifest in ``directory`` (a path, URI or opened directory): the job's commit
        point (a rename locally, one whole-object PUT on object storage)."""
        self.updated = time.time()
        write_json_atomic(directory, MANIFEST_NAME, self.to_dict(), before_commit)

    @classmethod
    def load(cls, directory: DirectorySpec) -> Manifest | None:
        """The manifest in ``directory`` (a path, URI or opened directory), None when there is none.

        Raises:
            InputError: for a manifest that is not ours or cannot be parsed.
        """
        opened = open_directory(directory)
        path = opened.describe(MANIFEST_NAME)
        try:
            raw = opened.read_bytes(MANIFEST_NAME)
            if raw is None:
                return None
            data = json.loads(raw.decode("utf-8"))
        except InputError:
            raise  # the storage cannot be read at all (credentials, bucket): not a damaged manifest
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: unreadable manifest ({err}); rerun with --overwrite to start again") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(
                f"{path}: not a minilm-npu corpus manifest; rerun with --overwrite or choose another output"
            )
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            known["shards"] = [ShardEntry.from_dict(entry) for entry in known.get("shards", [])]
        except (TypeError, AttributeError) as err:
            raise InputError(f"{path}: unreadable manifest ({err}); rerun with --overwrite to start again") from err
        return cls(**known)
