"""Where a job's files go, which of them are its own, and clearing up after a killed run.

A dataset output is its own work directory — local, or a prefix on object storage (see :mod:`.directory`); a
``.npy`` output (local only) is assembled from a ``<name>.partial`` work directory beside it. Only names the job
writes (manifest, lock, skipped-rows file, ``part-*.parquet`` and their ``.tmp`` files) are ever deleted, so
pointing the job at someone else's directory cannot destroy their files.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .directory import Directory, open_directory
from .lock import LOCK_NAME
from .manifest import MANIFEST_NAME, SKIPPED_NAME, Manifest
from .storage import TMP_SUFFIX, is_uri, local_path


class Layout:
    """Where things go: a dataset directory, or for ``.npy`` a ``<name>.partial`` work directory.

    Attributes:
        output: The output as the user named it (a ``Path``, or the URI string).
        work: The job's directory (:func:`~minilm_npu.corpus.directory.open_directory`).
    """

    def __init__(self, output: str | os.PathLike):
        self.output: str | Path
        self.work: Directory
        self.skipped_final: str | Path
        if is_uri(output):
            self.output = str(output).rstrip("/")
            if self.output.lower().endswith(".npy"):
                raise InputError(
                    f"{output}: a .npy output must be a local path; on object storage write a "
                    "Parquet dataset (a prefix such as s3://bucket/vectors)"
                )
            self.npy = False
            self.work = open_directory(self.output)
            self.skipped_final = self.work.describe(SKIPPED_NAME)
            return
        self.output = local_path(output)
        self.npy = self.output.suffix.lower() == ".npy"
        work = self.output.with_name(self.output.name + ".partial") if self.npy else self.output
        self.work = open_directory(work)
        self.skipped_final = (
            self.output.with_name(self.output.name + ".skipped.jsonl") if self.npy else work / SKIPPED_NAME
        )

    @staticmethod
    def ours(name: str) -> bool:
        base = name[: -len(TMP_SUFFIX)] if name.endswith(TMP_SUFFIX) else name
        return base in (MANIFEST_NAME, SKIPPED_NAME, LOCK_NAME) or (
            base.startswith("part-") and base.endswith(".parquet")
        )

    def check_new(self, overwrite: bool) -> None:
        """Raise InputError unless a job may start here from nothing (run before the lock, and again under it).

        Without a manifest, only the lock file and a first manifest's temporary file can be the job's own (it
        writes its manifest before anything else), so anything more means the output is someone else's.
        """
        if self.work.exists() and not self.work.is_dir():
            raise InputError(f"{self.work} exists and is not a directory; choose another output")
        if self.work.has(MANIFEST_NAME):
            return
        if self.npy and Path(self.output).exists() and not overwrite:
            raise InputError(f"{self.output} already exists; rerun with --overwrite to replace it")
        if not self.work.exists():
            return
        names = [name for name in self.work.names() if name not in (LOCK_NAME, MANIFEST_NAME + TMP_SUFFIX)]
        foreign = [name for name in names if not self.ours(name)]
        if names and not overwrite:
            raise InputError(
                f"{self.work}: directory is not empty and holds no minilm-npu manifest; choose "
                "an empty or new output, or rerun with --overwrite"
            )
        if foreign:
            raise InputError(
                f"{self.work}: holds files minilm-npu did not write ({', '.join(foreign[:3])}); "
                "choose an empty or new output directory"
            )

    def clear(self) -> None:
        """Delete what an earlier job wrote (and only that), keeping the lock file this job holds."""
        if self.npy:
            for path in (Path(self.output), Path(self.skipped_final)):
                path.unlink(missing_ok=True)
        names = self.work.names()
        foreign = [name for name in names if not self.ours(name)]
        if foreign:
            raise InputError(
                f"{self.work}: holds files minilm-npu did not write ({', '.join(foreign[:3])}); "
                "choose an empty or new output directory"
            )
        for name in names:
            if name != LOCK_NAME:
                self.work.delete(name)

    def tidy(self, manifest: Manifest) -> None:
        """Drop what a killed run wrote after its last commit: temp files, unlisted shards, uncommitted skips."""
        listed = {s.file for s in manifest.shards if s.file}
        for name in self.work.names():
            if name.endswith(TMP_SUFFIX) or (name.startswith("part-") and name not in listed):
                self.work.delete(name)
        self.work.truncate(SKIPPED_NAME, manifest.skipped_bytes)
