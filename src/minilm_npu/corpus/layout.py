"""Where a job's files go, which of them are its own, and clearing up after a killed run.

A dataset output is its own work directory; a ``.npy`` output is assembled from a ``<name>.partial`` work
directory beside it. Only names the job writes (manifest, lock, skipped-rows file, ``part-*.parquet`` and their
``.tmp`` files) are ever deleted, so pointing the job at someone else's directory cannot destroy their files.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .lock import LOCK_NAME
from .manifest import MANIFEST_NAME, SKIPPED_NAME, Manifest
from .writer import TMP_SUFFIX


class Layout:
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
        return base in (MANIFEST_NAME, SKIPPED_NAME, LOCK_NAME) or (base.startswith("part-")
                                                                    and base.endswith(".parquet"))

    def check_new(self, overwrite: bool) -> None:
        """Raise InputError unless a job may start here from nothing (run before the lock, and again under it).

        Without a manifest, only the lock file and a first manifest's temporary file can be the job's own (it
        writes its manifest before anything else), so anything more means the output is someone else's.
        """
        if self.work.exists() and not self.work.is_dir():
            raise InputError(f"{self.work} exists and is not a directory; choose another output")
        if (self.work / MANIFEST_NAME).exists():
            return
        if self.npy and self.output.exists() and not overwrite:
            raise InputError(f"{self.output} already exists; rerun with --overwrite to replace it")
        if not self.work.is_dir():
            return
        names = [p.name for p in self.work.iterdir() if p.name not in (LOCK_NAME, MANIFEST_NAME + TMP_SUFFIX)]
        foreign = [name for name in names if not self.ours(name)]
        if names and not overwrite:
            raise InputError(f"{self.work}: directory is not empty and holds no minilm-npu manifest; choose "
                             "an empty or new output, or rerun with --overwrite")
        if foreign:
            raise InputError(f"{self.work}: holds files minilm-npu did not write ({', '.join(foreign[:3])}); "
                             "choose an empty or new output directory")

    def clear(self) -> None:
        """Delete what an earlier job wrote (and only that), keeping the lock file this job holds."""
        if self.npy:
            for path in (self.output, self.skipped_final):
                path.unlink(missing_ok=True)
        foreign = [p.name for p in self.work.iterdir() if not self.ours(p.name)]
        if foreign:
            raise InputError(f"{self.work}: holds files minilm-npu did not write ({', '.join(foreign[:3])}); "
                             "choose an empty or new output directory")
        for path in self.work.iterdir():
            if path.name != LOCK_NAME:
                path.unlink()

    def tidy(self, manifest: Manifest) -> None:
        """Drop what a killed run wrote after its last commit: temp files, unlisted shards, uncommitted skips."""
        listed = {s["file"] for s in manifest.shards if s.get("file")}
        for path in self.work.iterdir():
            if path.name.endswith(TMP_SUFFIX) or (path.name.startswith("part-") and path.name not in listed):
                path.unlink()
        skipped = self.work / SKIPPED_NAME
        if skipped.exists():
            with open(skipped, "rb+") as handle:
                handle.truncate(manifest.skipped_bytes)
