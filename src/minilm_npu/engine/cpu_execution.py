"""How the host's CPU threads are spent: every thread-count decision of the project, in one module.

Four decisions, each with its reason below:

* **shares**: several CPU workers (``device="cpu,cpu"``) split the cores (:attr:`CpuExecution.worker_threads`);
* **lanes**: a call of several batches on one CPU, and a busy server, run on one-thread lanes that share the one
  model (:meth:`CpuExecution.lanes`, :meth:`CpuExecution.side_by_side`, :data:`LANE_SLACK`);
* **all cores**: a batch nothing runs beside gets every core, in an ``encode`` call (:meth:`CpuExecution.side_by_side`
  gives no workers) and in the server (:meth:`CpuExecution.runs_alone`), whose workers after the first take work
  only while another batch is running (:meth:`CpuExecution.takes_work`);
* **adaptive counts**: each CPU forward runs on one thread or on all of its worker's, whichever this machine runs
  faster under its current load (:class:`AdaptiveThreads`).

The encoder and the server's batcher both follow these rules, and every ``torch.set_num_threads`` of the project is
called here (:func:`set_threads`, :func:`use_threads`).

Why one thread so often: every op of a forward on several threads is an OpenMP parallel region ending in a barrier.
Small ops (a layer norm, a GELU, the attention of one short text) pay for it without gaining much, and on a machine
whose cores are shared (a busy server, a CI box, a VM, a container with a CPU quota) the barrier waits for a thread
the OS has not scheduled. Independent batches side by side, each on one thread, spend no time in barriers at all.
And a process should hold one OpenMP pool: GNU OpenMP stops its workers spinning between ops once a process holds more
OpenMP threads than cores (see :func:`minilm_npu.devices.release_host_threads`), so only one thread, the first
worker's, ever runs parallel regions on several cores.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

import torch

from .backend import Backend

W = TypeVar("W")
T = TypeVar("T")


def set_threads(count: int) -> None:
    """Run the calling thread's later parallel regions on ``count`` threads (the one ``torch.set_num_threads`` of
    the project; :func:`use_threads` for a scoped change).

    The count is the calling thread's, except that a thread's first parallel region starts it from the count any
    thread set last: a new thread that must run on a given count says so.
    """
    torch.set_num_threads(count)


@contextlib.contextmanager
def use_threads(count: int | None) -> Iterator[None]:
    """The calling thread runs on ``count`` threads inside the block and gets its own count back afterwards, also
    when the block raises; ``None`` (or the current count) changes nothing."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return
    set_threads(count)
    try:
        yield
    finally:
        set_threads(previous)


#: How much more than an even share (``1 / lanes`` of a call's tokens) one batch may hold for the call to run on
#: lanes: 0.6 of the tokens with two lanes.
LANE_SLACK = 1.2


class CpuExecution(Generic[W]):
    """The CPU execution policy of one encoder: its workers with their share of the cores, its lanes, and the rules
    the encoder and the server follow to run batches on them.

    Built once with the encoder; the workers and the lanes (each with its own lock) are made once, not per call.

    Args:
        backends: One engine per device, in the order of the encoder's devices.
        make_worker: Builds a worker ``(backend, host_threads)``; ``host_threads`` None means the calling thread's
            count (the encoder passes :class:`minilm_npu.encoder.DeviceWorker`).

    Attributes:
        workers: One worker per backend. With several CPU workers, each runs on ``worker_threads`` threads: every
            worker running every core would put twice as many OpenMP threads as cores on the machine, where every
            barrier waits for a thread the OS has not scheduled; independent batches side by side also beat one
            batch at a time on all cores for throughput.
        worker_threads: The cores each CPU worker runs on when several split them (cores // CPU workers); None with
            one CPU worker (every core).
    """

    def __init__(self, backends: Sequence[Backend], make_worker: Callable[[Backend, int | None], W]):
        self._backends = list(backends)
        self._make_worker = make_worker
        cpu_workers = sum(backend.device.type == "cpu" for backend in self._backends)
        self.worker_threads = max(1, torch.get_num_threads() // cpu_workers) if cpu_workers > 1 else None
        self.workers: list[W] = [
            make_worker(backend, self.worker_threads if backend.device.type == "cpu" else None)
            for backend in self._backends
        ]
        self._lanes: dict[int, list[W]] = {}  # the calling thread's count -> its lanes, made on first use
        self._lock = threading.Lock()

    def lanes(self) -> list[W]:
        """One worker per core of the calling thread's count, each on one thread, all on the one model; ``[]``
        unless there is one worker, on a CPU with at least two cores, whose backend may be shared.

        Unlike ``device="cpu,cpu"`` no second copy of the model is loaded: the backend must say it can run from
        several threads at once (:attr:`~minilm_npu.engine.backend.Backend.shareable`). One thread per lane, not a
        share of several: a lane that ran parallel regions on several threads would keep its own OpenMP pool beside
        the calling thread's. Made once per thread count, with their locks, so concurrent calls and the server share
        them instead of each running its own.
        """
        if len(self._backends) != 1:
            return []
        backend, cores = self._backends[0], torch.get_num_threads()
        if backend.device.type != "cpu" or cores < 2 or not backend.shareable:
            return []
        with self._lock:
            lanes = self._lanes.get(cores)
            if lanes is None:
                lanes = self._lanes[cores] = [self._make_worker(backend, 1) for _ in range(cores)]
            return lanes

    def side_by_side(self, batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> list[W]:
        """The workers one ``encode`` call runs its batches on side by side: every worker when there are several,
        else the lanes when the work divides, else ``[]``: one batch after another, each on every core, as a call of
        one batch always runs (nothing runs beside it).

        The work divides when there is at least one batch per lane and none holds more than :data:`LANE_SLACK` times
        an even share of the tokens: one core runs a forward more slowly than all of them, so with two lanes a batch
        holding more than ~60 % of a call's work takes longer alone on its lane than the whole call one batch after
        another (33 texts at batch 32).
        """
        if len(batches) < 2:
            return []
        if len(self.workers) > 1:
            return self.workers
        lanes = self.lanes()
        if not lanes or len(batches) < len(lanes):
            return []
        tokens = [sum(lengths[i] for i in batch) for batch in batches]
        if max(tokens) > LANE_SLACK * sum(tokens) / len(lanes):
            return []
        return lanes

    def batch_workers(self) -> list[W]:
        """The workers a server runs formed batches on, side by side: one per device, or on one CPU the lanes, so
        that a busy server's batches run as a multi-batch ``encode`` call's do."""
        if len(self.workers) > 1:
            return self.workers
        return self.lanes() or self.workers

    @staticmethod
    def takes_work(worker_index: int, running: int) -> bool:
        """Whether the server's worker ``worker_index`` may take the next batch while ``running`` batches run.

        The first worker takes work whenever there is some; the others only while a batch is already running (a
        second device, or a CPU's second lane, is for when the first is busy). So a lone client's batches all run on
        the first worker's thread, and on a CPU only that thread ever runs parallel regions on every core.
        """
        return worker_index == 0 or running > 0

    @staticmethod
    def runs_alone(queued: int, running: int) -> bool:
        """Whether a batch just formed runs alone (nothing else queued or running): then it gets every core
        (``run_on_all_cores``), as a one-batch ``encode`` call does, instead of its worker's share."""
        return queued == 0 and running == 0

    def describe(self) -> dict[str, str]:
        """The lanes, for the engine's reported choices (empty where there are none)."""
        lanes = self.lanes()
        if not lanes:
            return {}
        return {
            "lanes": (
                f"{len(lanes)} lanes sharing this one model, one thread each, for calls of several "
                f"batches and a busy server; a batch that runs alone gets all {len(lanes)} threads"
            )
        }


#: Forward sizes (tokens) that get their own thread-count estimate: a query, a batch of short texts, a large batch.
SIZE_CLASSES = (128, 2048)


class AdaptiveThreads:
    """Runs each CPU forward on one thread or on all of torch's threads, whichever this machine runs faster now.

    Why: on a quiet machine all threads win (a batch-1 forward streams its weights faster, a large batch has more
    FLOPs per second); on a machine whose cores are shared, each op's barrier costs a scheduler time slice and one
    thread wins by far. Which side wins depends on the load, not on the CPU, so it is measured as the engine runs,
    per size class (:data:`SIZE_CLASSES`): both choices are run once untimed (a first call pays for allocations and
    any kernel compilation), then timed, then the faster is used, and the other is tried again every
    ``explore_every`` calls so a change of load is noticed.

    "All threads" is the calling thread's count when the forward starts (``torch.get_num_threads()``): the process's
    cores, or a worker's share of them when several CPU workers split the cores (:class:`CpuExecution`). The count is
    restored after every forward (:func:`use_threads`).

    Args:
        explore_every: Calls (per size class) between two tries of the currently slower choice.
        margin: How much faster one thread must measure to be chosen: all threads are the right answer on a quiet
            machine, and a size class mixes batch sizes, so a noisy measurement should not flip it (under load one
            thread wins by several times).
    """

    def __init__(self, explore_every: int = 32, margin: float = 1.25):
        self.explore_every, self.margin = explore_every, margin
        self.seconds_per_token: dict[tuple[int, int], float] = {}  # (size class, threads) -> smoothed estimate
        self.warmed: set[tuple[int, int]] = set()  # first calls are not timed: allocations, kernels compiled
        self.calls: dict[int, int] = {}

    @staticmethod
    def size_class(tokens: int) -> int:
        """Index of the :data:`SIZE_CLASSES` bound ``tokens`` falls under (``len(SIZE_CLASSES)`` above them all)."""
        return next((index for index, bound in enumerate(SIZE_CLASSES) if tokens <= bound), len(SIZE_CLASSES))

    def choice(self, size: int = 0, all_threads: int | None = None) -> int:
        """The thread count the next forward of size class ``size`` runs with, out of ``all_threads`` (default:
        the calling thread's count)."""
        all_threads = all_threads or torch.get_num_threads()
        untried = [n for n in (1, all_threads) if (size, n) not in self.seconds_per_token]
        unwarmed = [n for n in untried if (size, n) not in self.warmed]
        if unwarmed:
            return unwarmed[0]
        if untried:
            return untried[0]
        one, every = self.seconds_per_token[size, 1], self.seconds_per_token[size, all_threads]
        best = 1 if one * self.margin < every else all_threads
        other = all_threads if best == 1 else 1
        return other if self.calls[size] % self.explore_every == 0 else best

    def run(self, tokens: int, forward: Callable[[], T]) -> T:
        """``forward()``, on the thread count this object picks for a forward of ``tokens`` tokens."""
        all_threads = torch.get_num_threads()
        if all_threads <= 1:
            return forward()
        size = self.size_class(tokens)
        self.calls[size] = self.calls.get(size, 0) + 1
        threads = self.choice(size, all_threads)
        with use_threads(threads):
            start = time.perf_counter()
            try:
                return forward()
            finally:  # + fixed per-forward work, counted as tokens
                self._record(size, threads, (time.perf_counter() - start) / (tokens + 16))

    def _record(self, size: int, threads: int, seconds_per_token: float) -> None:
        if (size, threads) not in self.warmed:  # a first call: allocations, compilation; not a measurement
            self.warmed.add((size, threads))
            return
        previous = self.seconds_per_token.get((size, threads))
        self.seconds_per_token[size, threads] = (
            seconds_per_token if previous is None else 0.7 * previous + 0.3 * seconds_per_token
        )
