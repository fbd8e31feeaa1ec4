"""The Ray engine: workers embed *and write* their shards; the driver only commits small reports.

A unit of work is a row range of one input file, ``(file, lo, hi]`` in the readers' row numbers (line numbers for
``.txt``/``.jsonl``, record numbers for CSV, row index + 1 for Parquet), ``shard_rows`` wide. A Ray actor (one
per device, model loaded once) reads its range with the same readers as the local engine — so row numbers, ids and
bad-row detection are identical — embeds the good rows, writes them as ``part-FFFFFF-RRRRRRRRRRRR.parquet`` (file
index, first row of the range: deterministic, so a retried unit rewrites the same name, and name order is input
order) through a temporary name, and returns a :class:`ShardReport` (name, rows, byte size, SHA-256, range, the
bad rows). No vector reaches the driver: it receives a few hundred bytes per shard and commits reports into the
manifest in input order, exactly as the local engine commits its shards, so a crash (of the driver or a worker)
leaves a consistent prefix and a rerun resumes from it; unlisted shards are deleted on resume.

The driver does not count rows up front: it keeps ``2 x actors`` units in flight per file and stops issuing
ranges for a file once a unit reports that the file ended inside it. Actors are restarted by Ray on a lost node
(``max_restarts``) and their pending units retried (``max_task_retries``); a unit that still fails stops the job,
whose rerun resumes from the manifest.

On a cluster every node must see the inputs and the output at the same path (a shared mount) or URI (``s3://…``:
actors get the URI and write their shards there themselves, see :mod:`.storage`) and have
``minilm-npu`` installed. Ray is imported lazily: ``pip install minilm-npu[ray]``.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EncoderConfig
from ..devices import split_devices
from ..errors import InputError
from .job import EmbedSettings
from .readers import CorpusReader
from .storage import open_directory
from .writer import write_shard

log = logging.getLogger(__name__)

INSTALL_HINT = "the Ray engine needs Ray: pip install 'minilm-npu[ray]'"


def import_ray() -> Any:
    """``ray``, or InputError with the install command."""
    try:
        import ray
    except ImportError as err:
        raise InputError(f"{INSTALL_HINT} ({err})") from err
    return ray


def unit_shard_name(file: int, lo: int) -> str:
    """The shard of the unit starting after row ``lo`` of file ``file``: zero-padded so name order is input order."""
    return f"part-{file:06d}-{lo:012d}.parquet"


@dataclass
class ShardReport:
    """What a worker tells the driver about one unit: everything the manifest needs, and no vectors.

    Attributes:
        file / lo / hi: The unit's input range, rows ``lo < row <= hi`` of input file ``file``.
        name: The shard's file name in the output directory, None when the unit had no good row.
        rows: Rows written to the shard.
        size: The shard's size in bytes.
        sha256: Hex SHA-256 of the shard's bytes.
        bad: ``(row, id, error)`` of each row that could not be embedded, in order.
        last: Row number of the last row read in the range (``lo`` when none).
        eof: The file ended inside this range.
        dimension: Embedding width (0 when unknown).
    """

    file: int
    lo: int
    hi: int
    name: str | None = None
    rows: int = 0
    size: int = 0
    sha256: str = ""
    bad: list[tuple[int, str, str]] = field(default_factory=list)
    last: int = 0
    eof: bool = False
    dimension: int = 0


def embed_unit(encoder: Any, reader: CorpusReader, output: Path, file: int, lo: int, hi: int,
               batch_size: int, keep_text: bool) -> ShardReport:
    """Read rows ``lo < row <= hi`` of ``file``, embed the good ones, write their shard; returns its report."""
    report = ShardReport(file=file, lo=lo, hi=hi, last=lo, eof=True)
    good = []
    for record in reader.file_records(file, lo):
        if record.row > hi:
            report.eof = False
            break
        report.last = record.row
        if record.error is None:
            good.append(record)
        else:
            report.bad.append((record.row, record.id, record.error))
    if good:
        vectors = np.asarray(encoder.encode([r.text for r in good], batch_size=batch_size,
                                            normalize_embeddings=True), dtype=np.float32)
        report.name = unit_shard_name(file, lo)
        report.rows, report.dimension = len(good), int(vectors.shape[1])
        written = write_shard(output, 0, [r.id for r in good], vectors,
                              [r.text for r in good] if keep_text else None, name=report.name)
        report.size, report.sha256 = written.bytes, written.sha256
    return report


class EmbedWorker:
    """The body of a Ray actor: one encoder on one device, embedding and writing units."""

    def __init__(self, reader: CorpusReader, output: str, factory: Callable[[], Any] | None,
                 config: EncoderConfig, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        if factory is None:
            from ..encoder import MiniLMEncoder

            self.encoder = MiniLMEncoder.from_config(config)
        else:
            self.encoder = factory()
        self.reader, self.output = reader, open_directory(output)  # a local path or a storage URI

    def run(self, file: int, lo: int, hi: int, batch_size: int, keep_text: bool) -> ShardReport:
        """Embed and write one unit."""
        return embed_unit(self.encoder, self.reader, self.output, file, lo, hi, batch_size, keep_text)


class RayEngine:
    """Embeds on Ray actors that write their own shards; see the module docstring.

    Args:
        config: The encoder's settings (each actor gets a copy with its own device); ``config.device`` picks the
            actor kind and count: ``auto`` (NPU, then GPU, then CPU, all the cluster has),
            ``cpu`` / ``cpu,cpu`` (that many CPU actors), ``cuda`` / ``npu`` (every card in the cluster) or a list
            such as ``npu:0,npu:1`` (that many actors).
        address: An existing cluster (``ray://host:10001`` or ``auto``); None starts a local Ray (or uses the
            one already initialised in this process).
        num_cpus: CPUs for a local Ray (None: all).
        model: Model name for the fingerprint (default: resolved from ``config.model_path``).
        encoder_factory: A picklable zero-argument callable building the encoder inside each actor, instead of
            ``MiniLMEncoder`` (tests use a fake one).
        **settings: Instead of ``config``: its fields (``device="cpu"``, ``dtype=...``).

    Attributes:
        driver_bytes: Pickled bytes of the reports the driver received in the last job (what crossed to it).
    """

    def __init__(self, config: EncoderConfig | None = None, address: str | None = None,
                 num_cpus: int | None = None, model: str | None = None,
                 encoder_factory: Callable[[], Any] | None = None, **settings: Any):
        import_ray()
        self.config = config or EncoderConfig(**settings)
        if model is None:
            from ..modelfiles import resolve_model

            model = resolve_model(self.config.model_path).name
        self.model, self.dtype, self.device = model, self.config.dtype, self.config.device
        self.address, self.num_cpus = address, num_cpus
        self.encoder_factory = encoder_factory
        self.driver_bytes = 0

    def _actors(self, ray: Any) -> tuple[str, int, dict]:
        """(device string inside an actor, actor count, ray resource arguments per actor)."""
        resources = ray.cluster_resources()
        spec = split_devices(self.device)
        kind = spec[0].split(":")[0]
        if kind == "auto":
            kind = "npu" if resources.get("NPU", 0) >= 1 else "cuda" if resources.get("GPU", 0) >= 1 else "cpu"
            spec = [kind]
        if kind not in ("cpu", "cuda", "npu") or any(s.split(":")[0] != kind for s in spec):
            raise InputError(f"--device {self.device!r}: the Ray engine takes one kind of device "
                             "(cpu, cuda or npu, optionally a list of one kind)")
        if kind == "cpu":
            count = len(spec)
            share = max(0.5, float(resources.get("CPU", 1)) / count)
            share = float(int(share)) if share >= 1 else share
            return "cpu", count, {"num_cpus": share, "_threads": max(1, int(share))}
        label = "GPU" if kind == "cuda" else "NPU"
        available = int(resources.get(label, 0))
        count = available if spec == [kind] else len(spec)
        if count < 1 or count > available:
            raise InputError(f"--device {self.device!r}: the Ray cluster has {available} {label} resource(s)")
        # Ray sets CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES per actor, so each sees its card as :0.
        args = {"num_gpus": 1} if kind == "cuda" else {"resources": {"NPU": 1}}
        return f"{kind}:0", count, args

    def stream(self, reader: CorpusReader, settings: EmbedSettings,
               start_after: tuple[int, int] | None) -> Iterator[Any]:
        """Embed in this process: used only to re-embed a damaged committed shard (the job runs on
        :meth:`write_shards`), which is rare and small enough not to need actors."""
        from .job import LocalEngine

        def build() -> Any:  # a function, never the factory itself: a class has an ``encode`` attribute too
            if self.encoder_factory is not None:
                return self.encoder_factory()
            from ..encoder import MiniLMEncoder

            return MiniLMEncoder.from_config(self.config.replace(device="auto"))

        yield from LocalEngine(build, self.model, self.dtype).stream(reader, settings, start_after)

    def write_shards(self, reader: CorpusReader, settings: EmbedSettings, start_after: tuple[int, int] | None,
                     output: Path) -> Iterator[ShardReport]:
        """Reports of the units after ``start_after``, in input order; the shards are already in ``output``."""
        ray = import_ray()
        for index in range(len(reader.files)):  # a missing column fails here, not inside a Ray task
            next(iter(reader.file_records(index, 0)), None)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        started_here = not ray.is_initialized()
        if started_here:
            # "local": without an address, start our own Ray, never attach to another cluster on this machine.
            ray.init(address=self.address or "local", num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        self.driver_bytes = 0
        try:
            yield from self._schedule(ray, reader, settings, start_after, output)
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, InputError):
                raise InputError(str(cause)) from err
            raise
        finally:
            if started_here:
                ray.shutdown()

    def _schedule(self, ray: Any, reader: CorpusReader, settings: EmbedSettings,
                  start_after: tuple[int, int] | None, output: Path) -> Iterator[ShardReport]:
        device, count, remote = self._actors(ray)
        threads = remote.pop("_threads", None)
        # A lost node's actors are restarted elsewhere and their pending units rerun (same range, same name).
        actor_class = ray.remote(max_restarts=-1, max_task_retries=-1, **remote)(EmbedWorker)
        actors = [actor_class.remote(reader, str(output), self.encoder_factory,
                                     self.config.replace(device=device), threads)
                  for _ in range(count)]
        width = settings.shard_rows
        file, lo = (start_after[0], start_after[1]) if start_after else (0, 0)
        pending: list[tuple[Any, int]] = []  # (object ref, file), in input order
        ended = -1  # files up to this one have been read to their end
        turn = 0
        while True:
            while len(pending) < 2 * count and file < len(reader.files):
                # Ranges are issued ahead of knowing where the file ends; one past the end reads nothing.
                actor = actors[turn % count]
                turn += 1
                pending.append((actor.run.remote(file, lo, lo + width, settings.batch_size, settings.keep_text),
                                file))
                lo += width
            if not pending:
                return
            ref, unit_file = pending.pop(0)
            report = ray.get(ref)
            self.driver_bytes += len(pickle.dumps(report))
            if unit_file <= ended:
                continue  # a range past the end of its file: nothing was read, nothing written
            if report.eof:
                ended = unit_file
                if file == unit_file:
                    file, lo = file + 1, 0
            yield report
