"""Static-shape forward passes, captured once per shape gear as device graphs and replayed.

Why: a 6-layer forward pass is ~80 small kernels. On an accelerator, eager PyTorch spends more time launching them
from Python than the card spends running them at small batches (one query, an interactive request, a lightly
loaded server). A device graph (CUDA graphs; Ascend's aclgraph through ``torch.npu.NPUGraph``) records the kernels
once and replays them with one launch. A graph has fixed shapes, so a batch is padded to a *gear*: rows rounded up
to a power of two, width to one of :data:`GRAPH_WIDTHS`. Padding costs FLOPs, so only
batches whose padded size stays under a budget take this path; larger ones run the packed engine eagerly, where
launches are a small share of the time.

The layout: every sequence of the gear is one row of ``width`` slots, so the packed ``[rows * width, hidden]``
tensor *is* the attention block (no gathers). One int64 input buffer carries the token ids and the lengths, so a
call is one host-to-device copy; the key mask, positions and pooling (the model's :class:`~.head.SentenceHead`) are
derived from the ids and lengths inside the graph. Rows past the real batch hold one token, so no attention row is
fully masked (that would give NaN, and ``0 * NaN`` would leak into the pooling matmul).

The same :class:`StaticShapeForward` runs eagerly on the CPU in the tests (exactness against sentence-transformers);
only the capture and replay are accelerator-only.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch

from ..devices import GraphAPI
from .bert import PackedBert
from .head import RowLayout, SentenceHead
from .packing import Bucket, PackedBatch
from .policy import round_to_gear, round_to_power_of_two

log = logging.getLogger(__name__)

#: Largest rows x width a graph is captured for, per dtype. Half-precision matrix units make padded FLOPs nearly
#: free next to launch overhead; float32 (TF32 stays off for exactness) runs several times slower per FLOP, so it
#: pads less.
MAX_GRAPH_SLOTS = {"float16": 16384, "bfloat16": 16384, "float32": 4096}
MAX_GRAPH_ROWS = 256
#: Widths a graph is captured for: steps of at most a third past 32 tokens, so padding wastes little compute (a
#: 172-token text pads to 192, not 256). Graphs are captured lazily, one per (rows, width) met.
GRAPH_WIDTHS = (16, 32, 48, 64, 96, 128, 160, 192, 256)
MAX_GRAPH_WIDTH = GRAPH_WIDTHS[-1]
#: Token id given to padding slots and spare rows (any id of every vocabulary would do: they are masked).
FILLER_ID = 0


def gear_for(lengths: list[int], dtype: str) -> tuple[int, int] | None:
    """The ``(rows, width)`` gear a batch of these sequence lengths pads to, or None when it is too large."""
    rows, width = round_to_power_of_two(len(lengths)), round_to_gear(max(lengths), GRAPH_WIDTHS)
    if rows > MAX_GRAPH_ROWS or width > MAX_GRAPH_WIDTH or rows * width > MAX_GRAPH_SLOTS.get(dtype, 0):
        return None
    return rows, width


class StaticShapeForward:
    """Forward pass and pooling for batches padded to one ``(rows, width)`` gear; every shape is fixed.

    Args:
        model: The packed BERT (its weights are shared, not copied).
        rows: Sequences per call (a power of two).
        width: Slots per sequence (a gear).
        head: The model's pooling and Dense modules.
    """

    def __init__(self, model: PackedBert, rows: int, width: int, head: SentenceHead, square_mask: bool = False):
        self.model, self.rows, self.width, self.head = model, rows, width, head
        self.square_mask = square_mask
        device = model.device
        # Token ids of every slot, then the length of every row: one buffer, one copy per call.
        self.inputs = torch.full((rows * width + rows,), FILLER_ID, dtype=torch.long, device=device)
        self.inputs[rows * width :] = 1
        self.slots = torch.arange(width, device=device)
        self.host = torch.empty_like(self.inputs, device="cpu", pin_memory=device.type != "cpu")

    def load(self, batch: list[list[int]]) -> None:
        """Copy a batch (at most ``rows`` sequences of at most ``width`` tokens) into the input buffer.

        Filled with one numpy scatter, not a loop of small tensors: at 128 rows the loop cost more host time
        than the whole replay. The caller reads the previous output back to the host (a synchronising copy)
        before the next ``load``, so the pinned buffer is never rewritten while a copy from it is queued.
        """
        slots = self.rows * self.width
        lengths = np.fromiter((len(ids) for ids in batch), dtype=np.int64, count=len(batch))
        host = self.host.numpy()
        host[:slots] = FILLER_ID
        host[slots:] = 1
        host[slots : slots + len(batch)] = lengths
        starts = np.arange(len(batch), dtype=np.int64) * self.width
        # Token t of sequence s goes to slot s * width + t.
        offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        host[np.repeat(starts, lengths) + offsets] = np.fromiter(
            itertools.chain.from_iterable(batch), dtype=np.int64, count=offsets.size
        )
        # Pinned host memory + non_blocking: the copy is queued on the stream, ordered before the replay.
        self.inputs.copy_(self.host, non_blocking=True)

    def compute(self) -> torch.Tensor:
        """Sentence embeddings before the final Normalize, float32 ``[rows, dimension]``, from the input buffer."""
        rows, width = self.rows, self.width
        ids, lengths = self.inputs[: rows * width], self.inputs[rows * width :]
        valid = self.slots[None, :] < lengths[:, None]  # [rows, width]
        mask = valid[:, None, None, :]
        if self.square_mask:  # policy.attention_plan: kernels that take no broadcast mask (Ascend)
            mask = mask.expand(-1, -1, width, -1).contiguous()
        layout = RowLayout.padded(lengths, width)
        packed = PackedBatch(
            ids=ids,
            rows=layout,
            starts=[],
            lengths=[width] * rows,
            buckets=[Bucket(None, mask, [width] * rows)],
            unpad=None,
            strategy="padded",
        )
        return self.head(self.model.forward(packed), layout)


class _Captured:
    """One gear's forward pass recorded as a device graph."""

    def __init__(self, forward: StaticShapeForward, api: GraphAPI, pool):
        # Capture needs a few eager runs on a side stream first (kernel selection, library workspaces).
        side = api.stream(device=forward.model.device)
        side.wait_stream(api.current_stream(forward.model.device))
        with api.use_stream(side):
            for _ in range(2):
                forward.compute()
        api.current_stream(forward.model.device).wait_stream(side)
        self.graph = api.graph_class()
        with api.capture(self.graph, pool=pool):
            self.output = forward.compute()
        self.forward = forward

    def __call__(self) -> torch.Tensor:
        self.graph.replay()
        return self.output


class GraphedForwards:
    """Static-shape forward passes per gear, captured as device graphs on first use (eager where no graph API).

    Every gear's graph shares one memory pool: they are replayed one at a time (the backend runs under its
    worker's lock) and each output is read before the next replay.

    Args:
        model: The packed BERT on its device.
        dtype: The engine's dtype (sets the padding budget, :data:`MAX_GRAPH_SLOTS`).
        head: The model's pooling and Dense modules.
        api: The device's graph API; None runs the static-shape passes eagerly (the CPU tests do).
        square_mask: Full ``[rows, 1, width, width]`` attention masks (see policy.attention_plan).
    """

    def __init__(
        self, model: PackedBert, dtype: str, head: SentenceHead, api: GraphAPI | None, square_mask: bool = False
    ):
        self.model, self.dtype, self.head, self.api = model, dtype, head, api
        self.square_mask = square_mask
        self._runners: dict[tuple[int, int], object] = {}
        self._pool = api.pool_handle() if api is not None else None
        self.failed = False

    def _runner(self, gear: tuple[int, int]):
        runner = self._runners.get(gear)
        if runner is None:
            forward = StaticShapeForward(self.model, gear[0], gear[1], self.head, self.square_mask)
            runner = (forward, forward.compute)
            if self.api is not None:
                try:
                    runner = (forward, _Captured(forward, self.api, self._pool))
                except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager, once, loudly
                    log.warning(
                        "device graph capture failed on %s (%s: %s); running eagerly from now on",
                        self.model.device,
                        type(err).__name__,
                        err,
                    )
                    self.failed = True
                    return None
            self._runners[gear] = runner
        return runner

    def embed(self, batch: list[list[int]]) -> torch.Tensor | None:
        """Sentence embeddings float32 ``[len(batch), dimension]``, or None when this batch is not for a graph (too
        large)."""
        if self.failed:
            return None
        gear = gear_for([len(ids) for ids in batch], self.dtype)
        if gear is None:
            return None
        runner = self._runner(gear)
        if runner is None:
            return None
        forward, run = runner
        forward.load(batch)
        return run()[: len(batch)].clone()

    def capture(self, gears: list[tuple[int, int]]) -> None:
        """Build the graphs of these gears now (warm-up), so the first requests do not pay for capture."""
        for gear in gears:
            if self._runner(gear) is None:
                return
