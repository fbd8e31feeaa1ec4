"""The Ray engine: the same job on Ray Data, so it scales from one machine to an existing cluster unchanged.

Pipeline: a Ray Data read (one read task per input file, streaming our own readers, so row numbers, ids and
bad-row detection are exactly the local engine's) -> ``map_batches`` with an actor pool (the model is loaded once
per actor; one actor per device: ``num_gpus=1`` on CUDA, ``resources={"NPU": 1}`` on Ascend, CPU actors otherwise)
-> the driver, which receives the rows in input order (``preserve_order``) and writes them with the same
atomic shards and manifest as the local engine. Writing on the driver is what keeps the output ordered,
exactly-once and resumable after a crash; it costs ~1.5 KB per row of transfer, far below what one card embeds.

On a cluster, every node must see the input files at the same path and have ``minilm-npu`` installed; the output
is written where the driver runs. Ray is imported lazily: ``pip install minilm-npu[ray]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..config import EncoderConfig
from ..devices import split_devices
from ..errors import InputError
from .job import EmbedSettings, ShardBatch
from .readers import CorpusReader, Record

log = logging.getLogger(__name__)

INSTALL_HINT = "the Ray engine needs Ray: pip install 'minilm-npu[ray]'"
#: Rows per block coming out of a read task, and per actor call (the encoder sorts by length inside a call).
BLOCK_ROWS = 1024


def import_ray() -> Any:
    """``ray`` with Ray Data, or InputError with the install command."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data extra, not only core Ray
    except ImportError as err:
        raise InputError(f"{INSTALL_HINT} ({err})") from err
    return ray


def _records_table(records: list[Record]):
    import pyarrow as pa

    return pa.table({
        "file": pa.array([r.file for r in records], type=pa.int32()),
        "row": pa.array([r.row for r in records], type=pa.int64()),
        "id": pa.array([r.id for r in records], type=pa.string()),
        "text": pa.array([r.text for r in records], type=pa.string()),
        "error": pa.array([r.error for r in records], type=pa.string()),
    })


def _make_datasource(reader: CorpusReader, start_after: tuple[int, int] | None):
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class CorpusDatasource(Datasource):
        """One read task per input file, each streaming blocks of ``BLOCK_ROWS`` records."""

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list:
            tasks = []
            for index, file in enumerate(reader.files):
                skip = 0
                if start_after is not None:
                    if index < start_after[0]:
                        continue
                    skip = start_after[1] if index == start_after[0] else 0
                meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                     input_files=[str(file.path)])
                tasks.append(ReadTask(lambda index=index, skip=skip: _read_file(reader, index, skip), meta))
            return tasks

    return CorpusDatasource()


def _read_file(reader: CorpusReader, index: int, skip: int) -> Iterator[Any]:
    block: list[Record] = []
    for record in reader.file_records(index, skip):
        block.append(record)
        if len(block) >= BLOCK_ROWS:
            yield _records_table(block)
            block = []
    if block:
        yield _records_table(block)


class EmbedActor:
    """A Ray actor holding one encoder on one device; called with pyarrow batches of records."""

    def __init__(self, config: EncoderConfig, batch_size: int | None, keep_text: bool, threads: int | None):
        from ..encoder import MiniLMEncoder

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.encoder = MiniLMEncoder.from_config(config)
        self.batch_size = batch_size
        self.keep_text = keep_text

    def __call__(self, batch):
        import pyarrow as pa

        errors = batch.column("error").to_pylist()
        texts = batch.column("text").to_pylist()
        good = [i for i, e in enumerate(errors) if e is None]
        vectors = np.zeros((len(errors), self.encoder.dimension), dtype=np.float32)
        if good:
            vectors[good] = self.encoder.encode([texts[i] for i in good], batch_size=self.batch_size,
                                                normalize_embeddings=True)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.encoder.dimension)
        if not self.keep_text:
            batch = batch.drop_columns(["text"])
        return batch.append_column("embedding", embedding)


class RayEngine:
    """Embeds through Ray Data actors; see the module docstring.

    Args:
        config: The encoder's settings (each actor gets a copy with its own device); ``config.device`` picks the
            actor kind and count: ``auto`` (NPU, then GPU, then CPU, all the cluster has),
            ``cpu`` / ``cpu,cpu`` (that many CPU actors), ``cuda`` / ``npu`` (every card in the cluster) or a list
            such as ``npu:0,npu:1`` (that many actors).
        address: An existing cluster (``ray://host:10001`` or ``auto``); None starts a local Ray.
        num_cpus: CPUs for a local Ray (None: all).
        model: Model name for the fingerprint (default: resolved from ``config.model_path``).
        **settings: Instead of ``config``: its fields (``device="cpu"``, ``dtype=...``).
    """

    def __init__(self, config: EncoderConfig | None = None, address: str | None = None,
                 num_cpus: int | None = None, model: str | None = None, **settings: Any):
        import_ray()
        self.config = config or EncoderConfig(**settings)
        if model is None:
            from ..modelfiles import resolve_model

            model = resolve_model(self.config.model_path).name
        self.model, self.dtype, self.device = model, self.config.dtype, self.config.device
        self.address, self.num_cpus = address, num_cpus

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
            cpus = float(resources.get("CPU", 1))
            # Leave room for the read tasks (0.25 CPU each) so a small local Ray cannot deadlock.
            share = max(0.5, (cpus - 0.5) / count)
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
               start_after: tuple[int, int] | None) -> Iterator[ShardBatch]:
        ray = import_ray()
        for index in range(len(reader.files)):  # a missing column fails here, not inside a Ray task
            next(iter(reader.file_records(index, 0)), None)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # our bar and summary say what matters
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        try:
            yield from self._stream(ray, reader, settings, start_after)
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, InputError):
                raise InputError(str(cause)) from err
            raise
        finally:
            if started_here:
                ray.shutdown()

    def _stream(self, ray: Any, reader: CorpusReader, settings: EmbedSettings,
                start_after: tuple[int, int] | None) -> Iterator[ShardBatch]:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in input order
        context.enable_progress_bars = False  # the job's own bar counts rows
        device, count, remote = self._actors(ray)
        threads = remote.pop("_threads", None)
        dataset = ray.data.read_datasource(_make_datasource(reader, start_after), num_cpus=0.25)
        dataset = dataset.map_batches(
            EmbedActor, batch_format="pyarrow", batch_size=min(BLOCK_ROWS, settings.shard_rows),
            compute=ray.data.ActorPoolStrategy(size=count), fn_constructor_kwargs={
                "config": self.config.replace(device=device), "batch_size": settings.batch_size,
                "keep_text": settings.keep_text, "threads": threads},
            **remote)
        records: list[Record] = []
        vectors: list[np.ndarray] = []
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            records.extend(_batch_records(batch, settings.keep_text))
            vectors.append(_fixed_list(batch.column("embedding")))
            while len(records) >= settings.shard_rows:
                yield _cut(records, vectors, settings.shard_rows)
        if records:
            yield _cut(records, vectors, len(records))


def _batch_records(batch: Any, keep_text: bool) -> list[Record]:
    columns = [batch.column(name).to_pylist() for name in ("file", "row", "id", "error")]
    texts = batch.column("text").to_pylist() if keep_text else [None] * batch.num_rows
    return [Record(f, r, i, t, e) for f, r, i, e, t in zip(*columns, texts)]


def _fixed_list(column: Any) -> np.ndarray:
    from .writer import fixed_list_to_numpy

    return fixed_list_to_numpy(column)


def _cut(records: list[Record], vectors: list[np.ndarray], size: int) -> ShardBatch:
    """Take the first ``size`` records (and their vectors) off the buffers; returns them with good-row vectors."""
    stacked = np.concatenate(vectors) if len(vectors) > 1 else vectors[0]
    head, rest = records[:size], records[size:]
    keep = np.array([r.error is None for r in head], dtype=bool)
    shard = (head, stacked[:size][keep])
    records[:] = rest
    vectors[:] = [stacked[size:]]
    return shard
