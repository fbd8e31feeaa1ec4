"""The Ray engine: workers embed *and write* their shards; the driver only commits small reports.

The driver plans the units of work up front (:mod:`.units`): a byte range of a large ``.txt``/``.jsonl`` file cut
on line boundaries, a range of Parquet row groups, or a whole CSV/TSV/gzipped file, each knowing its first row
number. A Ray actor (one per device, model loaded once) reads only its unit — a seek to its first byte or row
group, never the file before it — with the same readers as the local engine, so row numbers, ids and bad-row
detection are identical; it embeds the good rows and writes them as shards of at most ``shard_rows`` rows,
``part-FFFFFF-RRRRRRRRRRRR.parquet`` (file index, the row the shard starts after: deterministic, so a retried unit
rewrites the same names, and name order is input order), each through a temporary name, and returns a
:class:`ShardReport` per shard (name, rows, byte size, SHA-256, range, the bad rows). No vector reaches the
driver: it receives a few hundred bytes per shard and commits reports into the manifest in input order, exactly
as the local engine commits its shards, so a crash (of the driver or a worker) leaves a consistent prefix and a
rerun resumes from it; unlisted shards are deleted on resume.

The driver keeps ``2 x actors`` units in flight and plans each file when the schedule reaches it, so the actors
start while later inputs are still being planned. Actors are restarted by Ray on a lost node (``max_restarts``)
and their pending units retried (``max_task_retries``); a unit that still fails stops the job, whose rerun
resumes from the manifest.

On a cluster every node must see the inputs and the output at the same path (a shared mount) or URI (``s3://…``:
actors get the URI and write their shards there themselves, see :mod:`.storage`) and have
``minilm-npu`` installed. Ray is imported lazily: ``pip install minilm-npu[ray]``.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import EncoderConfig
from ..contract import Encoder
from ..devices import split_devices
from ..errors import InputError
from .directory import DirectorySpec, open_directory
from .engines import EmbedSettings, ShardBatch, ShardWriter, WrittenShard
from .local_engine import LocalEngine
from .manifest import ShardEntry
from .readers import CorpusReader, Record
from .units import Unit, plan_units
from .writer import write_records

log = logging.getLogger(__name__)
#: Which process a shard came from (reports carry it, so a run shows how its units were spread).
WORKER = f"{socket.gethostname()}:{os.getpid()}"

INSTALL_HINT = "the Ray engine needs Ray: pip install 'minilm-npu[ray]'"


def import_ray() -> Any:
    """``ray``, or InputError with the install command."""
    try:
        import ray
    except ImportError as err:
        raise InputError(f"{INSTALL_HINT} ({err})") from err
    return ray


def unit_shard_name(file: int, lo: int) -> str:
    """The shard starting after row ``lo`` of input file ``file``: zero-padded so name order is input order."""
    return f"part-{file:06d}-{lo:012d}.parquet"


@dataclass
class ShardReport:
    """What a worker tells the driver about one shard it wrote: everything the manifest needs, and no vectors.

    Attributes:
        file / lo / hi: The shard's input range, rows ``lo < row <= hi`` of input file ``file``.
        name: The shard's file name in the output directory, None when every row in its range was bad.
        rows: Rows written to the shard.
        size: The shard's size in bytes.
        sha256: Hex SHA-256 of the shard's bytes.
        bad: Each row that could not be embedded, in order.
        last: Row number of the last row read in the range (``lo`` when none).
        eof: The file ended inside this range (a whole-file unit's last shard; ``hi`` is then only a bound).
        dimension: Embedding width (0 when unknown).
        worker: ``host:pid`` of the process that wrote the shard.
        input_bytes: ``[start, stop)`` byte offsets of the unit read, for a ``.txt``/``.jsonl`` byte-range unit
            (on its last shard): a resumed job plans from ``stop`` instead of scanning the file again.
    """

    file: int
    lo: int
    hi: int
    name: str | None = None
    rows: int = 0
    size: int = 0
    sha256: str = ""
    bad: list[Record] = field(default_factory=list)
    last: int = 0
    eof: bool = False
    dimension: int = 0
    worker: str = ""
    input_bytes: tuple[int, int] | None = None

    def written(self) -> WrittenShard:
        """The shard as the job commits it: its manifest entry, covering rows ``lo < row <= end``."""
        entry = ShardEntry(
            file=self.name,
            rows=self.rows,
            skipped=len(self.bad),
            start=[self.file, self.lo],
            end=[self.file, self.last if self.eof else self.hi],
            input_bytes=list(self.input_bytes) if self.input_bytes else None,
        )
        if self.name:
            entry.bytes, entry.sha256 = self.size, self.sha256
        return WrittenShard(entry, list(self.bad), self.dimension)


def build_encoder(config: EncoderConfig, factory: Callable[[], Encoder] | None = None) -> Encoder:
    """The encoder an actor (or the driver, to repair a shard) embeds with: ``factory()``, else the one ``config``
    describes."""
    if factory is not None:
        return factory()
    from ..encoder import MiniLMEncoder

    return MiniLMEncoder.from_config(config)


def embed_unit(
    encoder: Encoder,
    reader: CorpusReader,
    output: DirectorySpec,
    unit: Unit,
    shard_rows: int,
    batch_size: int | None,
    keep_text: bool,
    stop_at_bad: bool = False,
) -> list[ShardReport]:
    """Read one unit, embed its good rows and write them as shards of at most ``shard_rows`` rows.

    Shard boundaries are counted from the unit's first row (``unit.skip``), so they, and the shard names, are the
    same whichever worker runs the unit and however often. ``stop_at_bad`` stops after the first shard holding a
    bad row (``--on-error fail``: the driver stops the job there anyway).

    Returns:
        One report per shard that holds a row (good or bad), in row order.
    """
    reports: list[ShardReport] = []

    def shard_from(lo: int) -> ShardReport:
        hi = lo + shard_rows if unit.hi is None else min(lo + shard_rows, unit.hi)
        return ShardReport(file=unit.file, lo=lo, hi=hi, last=lo, worker=WORKER)

    def flush(shard: ShardReport, good: list) -> None:
        if good:
            vectors = np.asarray(
                encoder.encode([r.text for r in good], batch_size=batch_size, normalize_embeddings=True),
                dtype=np.float32,
            )
            shard.name = unit_shard_name(unit.file, shard.lo)
            shard.rows, shard.dimension = len(good), int(vectors.shape[1])
            written = write_records(output, 0, good, vectors, keep_text, name=shard.name)
            shard.size, shard.sha256 = written.bytes, written.sha256
        reports.append(shard)

    good: list[Record] = []
    shard, seen = shard_from(unit.skip), False
    for record in reader.file_records(unit.file, unit.skip, unit):
        if record.row > shard.hi:
            if seen:
                flush(shard, good)
                if stop_at_bad and shard.bad:
                    return reports
            # The last boundary below this row (a run of blank JSONL lines may skip a whole shard's range).
            lo = shard.lo + shard_rows * ((record.row - 1 - shard.lo) // shard_rows)
            shard, good, seen = shard_from(lo), [], False
        seen = True
        shard.last = record.row
        if record.error is None:
            good.append(record)
        else:
            shard.bad.append(record)
    if seen:
        shard.eof = unit.hi is None  # a whole-file unit ends where the file does, not at a planned row
        if unit.kind == "lines":
            shard.input_bytes = (unit.start, unit.stop)
        flush(shard, good)
    return reports


class EmbedWorker:
    """The body of a Ray actor: one encoder on one device, embedding and writing units."""

    def __init__(
        self,
        reader: CorpusReader,
        output: str,
        factory: Callable[[], Encoder] | None,
        config: EncoderConfig,
        threads: int | None,
    ):
        if threads:  # this actor's share of the node's cores, set before the model is built
            from ..engine.cpu_execution import set_threads

            set_threads(threads)
        self.encoder = build_encoder(config, factory)
        self.reader, self.output = reader, open_directory(output)  # a local path or a storage URI

    def run(
        self, unit: Unit, shard_rows: int, batch_size: int | None, keep_text: bool, stop_at_bad: bool
    ) -> list[ShardReport]:
        """Embed and write one unit; see :func:`embed_unit`."""
        return embed_unit(self.encoder, self.reader, self.output, unit, shard_rows, batch_size, keep_text, stop_at_bad)


class RayEngine(ShardWriter):
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
        workers: Shards written per worker process (``host:pid``) in the last job: how the units were spread.
    """

    def __init__(
        self,
        config: EncoderConfig | None = None,
        address: str | None = None,
        num_cpus: int | None = None,
        model: str | None = None,
        encoder_factory: Callable[[], Encoder] | None = None,
        **settings: Any,
    ):
        import_ray()
        self.config = config or EncoderConfig(**settings)
        if model is None:
            from ..modelfiles import resolve_model

            model = resolve_model(self.config.model_path).name
        self.model, self.dtype, self.device = model, self.config.dtype, self.config.device
        self.address, self.num_cpus = address, num_cpus
        self.encoder_factory = encoder_factory
        self.driver_bytes = 0
        self.workers: Counter[str] = Counter()

    def _actors(self, ray: Any) -> tuple[str, int, dict]:
        """(device string inside an actor, actor count, ray resource arguments per actor)."""
        resources = ray.cluster_resources()
        spec = split_devices(self.device)
        kind = spec[0].split(":")[0]
        if kind == "auto":
            kind = "npu" if resources.get("NPU", 0) >= 1 else "cuda" if resources.get("GPU", 0) >= 1 else "cpu"
            spec = [kind]
        if kind not in ("cpu", "cuda", "npu") or any(s.split(":")[0] != kind for s in spec):
            raise InputError(
                f"--device {self.device!r}: the Ray engine takes one kind of device "
                "(cpu, cuda or npu, optionally a list of one kind)"
            )
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

    def stream(
        self, reader: CorpusReader, settings: EmbedSettings, start_after: tuple[int, int] | None
    ) -> Generator[ShardBatch, None, None]:
        """Embed in this process: used only to re-embed a damaged committed shard (the job runs on
        :meth:`write_shards`), which is rare and small enough not to need actors."""

        def build() -> Encoder:
            return build_encoder(self.config.replace(device="auto"), self.encoder_factory)

        yield from LocalEngine(build, self.model, self.dtype).stream(reader, settings, start_after)

    def write_shards(
        self,
        reader: CorpusReader,
        settings: EmbedSettings,
        start_after: tuple[int, int] | None,
        output: str,
        offset: int | None = None,
    ) -> Iterator[WrittenShard]:
        """The shards of the units after ``start_after``, in input order, already written into ``output`` (a path
        or URI) by the actors; what reaches this process is their :class:`ShardReport`, never a vector.

        ``offset`` is the byte offset just after ``start_after``'s row when the manifest recorded it (see
        :func:`~minilm_npu.corpus.units.plan_units`).
        """
        ray = import_ray()
        for index in range(len(reader.files)):  # a missing column fails here, not inside a Ray task
            next(iter(reader.file_records(index, 0)), None)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        started_here = not ray.is_initialized()
        if started_here:
            # "local": without an address, start our own Ray, never attach to another cluster on this machine.
            ray.init(
                address=self.address or "local",
                num_cpus=None if self.address else self.num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        self.driver_bytes = 0
        self.workers = Counter()
        try:
            plan = plan_units(reader.files, settings.shard_rows, start_after, offset)
            for report in self._schedule(ray, reader, settings, plan, output):
                yield report.written()
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, InputError):
                raise InputError(str(cause)) from err
            raise
        finally:
            if started_here:
                ray.shutdown()

    def _schedule(
        self, ray: Any, reader: CorpusReader, settings: EmbedSettings, plan: Iterator[Unit], output: str
    ) -> Iterator[ShardReport]:
        device, count, remote = self._actors(ray)
        threads = remote.pop("_threads", None)
        # A lost node's actors are restarted elsewhere and their pending units rerun (same range, same name).
        actor_class = ray.remote(max_restarts=-1, max_task_retries=-1, **remote)(EmbedWorker)
        actors = [
            actor_class.remote(reader, output, self.encoder_factory, self.config.replace(device=device), threads)
            for _ in range(count)
        ]
        args = (settings.shard_rows, settings.batch_size, settings.keep_text, settings.on_error == "fail")
        pending: deque[tuple[Any, int]] = deque()  # (object ref, actor), in input order
        load = [0] * count  # units queued or running per actor
        running: dict[Any, int] = {}  # refs not yet seen finished -> actor
        while True:
            # Keep 2 units per actor in flight; the least-loaded actor takes the next one, so a long unit (a
            # whole CSV file) does not hold up units queued behind it on the same actor.
            while len(pending) < 2 * count and (unit := next(plan, None)) is not None:
                actor = min(range(count), key=load.__getitem__)
                ref = actors[actor].run.remote(unit, *args)
                load[actor] += 1
                running[ref] = actor
                pending.append((ref, actor))
            if not pending:
                return
            ref, _ = pending.popleft()
            reports = ray.get(ref)  # reports are committed in input order, whatever order units finish in
            self.driver_bytes += len(pickle.dumps(reports))
            self.workers.update(report.worker for report in reports)
            for done in [ref] + ray.wait(list(running), num_returns=len(running), timeout=0)[0]:
                if done in running:
                    load[running.pop(done)] -= 1
            yield from reports
