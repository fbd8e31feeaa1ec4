"""Packing: a batch of token-id lists laid end to end, with every index tensor attention and pooling need.

:func:`pack` builds one :class:`PackedBatch` per forward, on the host, in small steps:

1. :func:`lay_out_tokens`: the ids end to end, each token's position in its own sequence, where each sequence starts,
   and any padding rows a token gear asks for;
2. :func:`plan_blocks`: which sequences share a padded attention block, and its width and row count;
3. :func:`gather_block`: per block, the packed rows it gathers, its key mask, and where its real tokens land;
4. :func:`unpad_index`: the way back from the blocks (pooling reads the layout, :class:`~.head.RowLayout`);
5. :func:`move_to_device`: everything in one copy per dtype.

Token gears (the CPU's :func:`~minilm_npu.engine.policy.round_tokens_to_gear`) round the packed tensor's row count
up, so that a process meets a bounded set of shapes instead of a new one with almost every batch: padding rows come
last, hold token 0 in slot 0, are in no attention block and belong to no sequence (pooling leaves them out), so they
never reach a result (row-wise kernels may order a sum differently for another row count: the usual last-bit noise).

Layers only read the result (:class:`~minilm_npu.engine.bert.PackedBert`); :mod:`.graphs` builds its fixed-shape
``PackedBatch`` itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch

from ..devices import to_device
from .head import RowLayout

ATTENTION_STRATEGIES = ("per_sequence", "bucketed", "padded", "varlen")


@dataclass
class Bucket:
    """Sequences whose attention runs as one padded block.

    Attributes:
        gather: ``[n * width]`` rows of the packed tensor (padding slots repeat a valid row; they are masked);
            None when the packed tensor's first ``sum(lengths)`` rows are the block (the static-shape layout of
            :mod:`.graphs`, a lone sequence).
        mask: ``[n, 1, 1, width]`` bool, True on real keys; None when no sequence is padded.
        lengths: The real length of each of the block's sequences.
    """

    gather: torch.Tensor | None
    mask: torch.Tensor | None
    lengths: list[int]


@dataclass
class PackedBatch:
    """A batch of token-id lists laid end to end, plus every index tensor the forward pass needs.

    Built once per forward; layers only read it.
    """

    ids: torch.Tensor  # [R] int64: T real tokens, then R - T padding rows (token gears)
    rows: RowLayout  # each row's sequence and slot in it (positions, pooling); padding rows belong to none
    starts: list[int]
    lengths: list[int]
    buckets: list[Bucket]
    unpad: torch.Tensor | None  # [R] rows of the concatenated bucket outputs, in packed order (None: identity)
    strategy: str


# -- 1. tokens -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLayout:
    """A batch's tokens end to end, on the host.

    Attributes:
        ids: ``[R]`` int64, every sequence's ids one after another, then ``R - T`` padding rows (token 0).
        positions: ``[R]`` int64, each token's index in its own sequence (0 on padding rows).
        sequence: ``[T]`` int64, the sequence each real token belongs to.
        starts: Where each sequence's first token is.
        lengths: Each sequence's token count.
    """

    ids: torch.Tensor
    positions: torch.Tensor
    sequence: torch.Tensor
    starts: list[int]
    lengths: list[int]

    @property
    def total(self) -> int:
        """Real tokens in the batch (``T``)."""
        return self.sequence.numel()

    @property
    def rows(self) -> int:
        """Rows of the packed tensor (``R``): the real tokens and the padding after them."""
        return self.ids.numel()


def lay_out_tokens(batch: Sequence[Sequence[int]], rows: int | None = None) -> TokenLayout:
    """The batch's ids end to end, with each token's position and sequence, padded to ``rows`` rows if given."""
    lengths = [len(ids) for ids in batch]
    starts = list(itertools.accumulate([0] + lengths[:-1]))
    total = sum(lengths)
    padding = max(0, (rows or total) - total)
    ids = torch.tensor(list(itertools.chain.from_iterable(batch)) + [0] * padding, dtype=torch.long)
    sequence = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor(lengths))
    positions = torch.arange(total) - torch.tensor(starts)[sequence]
    if padding:
        positions = torch.cat([positions, torch.zeros(padding, dtype=torch.long)])
    return TokenLayout(ids, positions, sequence, starts, lengths)


# -- 2. attention blocks -------------------------------------------------------------------------------------


def plan_buckets(lengths: Sequence[int], slack: float = 0.25, max_rows: int = 64) -> list[list[int]]:
    """Group sequence indices into attention blocks of similar length, longest first.

    A block closes when the next sequence is shorter than ``(1 - slack)`` of the block's longest (so at most
    ``slack`` of a block's keys are padding) or holds ``max_rows`` sequences.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for index in order:
        if groups and len(groups[-1]) < max_rows and lengths[index] >= (1 - slack) * lengths[groups[-1][0]]:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


@dataclass(frozen=True)
class BlockPlan:
    """One padded attention block.

    Attributes:
        members: The sequences in it, one per row, in row order.
        width: Slots per row: the longest member's length, or the gear it rounds to.
        rows: Rows: one per member, or the row gear their count rounds to (spare rows repeat the first member).
    """

    members: list[int]
    width: int
    rows: int


def plan_blocks(
    lengths: Sequence[int],
    strategy: str,
    slack: float,
    gears: Callable[[int], int] | None = None,
    row_gears: Callable[[int], int] | None = None,
) -> list[BlockPlan]:
    """The padded attention blocks of a strategy: similar lengths together (``"bucketed"``), every sequence in one
    (``"padded"``), none for the strategies that attend on the packed tensor itself."""
    if strategy not in ("bucketed", "padded"):
        return []
    groups = [list(range(len(lengths)))] if strategy == "padded" else plan_buckets(lengths, slack)
    plans = []
    for group in groups:
        width = max(lengths[i] for i in group)
        plans.append(
            BlockPlan(group, gears(width) if gears else width, row_gears(len(group)) if row_gears else len(group))
        )
    return plans


# -- 3. gather and mask per block ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HostBlock:
    """A planned block's index tensors, on the host.

    Attributes:
        bucket: What attention reads: the gather index, the key mask and the row lengths.
        real_rows: The packed tensor's rows that hold this block's real tokens.
        slots: Where those tokens land in the block's ``[rows * width]`` output, in the same order.
    """

    bucket: Bucket
    real_rows: torch.Tensor
    slots: torch.Tensor


def gather_block(layout: TokenLayout, plan: BlockPlan) -> HostBlock:
    """The gather index and key mask of one block, and where its real tokens land in its output."""
    lengths = [layout.lengths[i] for i in plan.members]
    slot = torch.arange(plan.width)
    valid = slot[None, :] < torch.tensor(lengths)[:, None]  # [members, width]
    # Padding slots point at the sequence's own first row: any valid row would do, they are masked.
    gather = torch.tensor([layout.starts[i] for i in plan.members])[:, None] + torch.where(valid, slot[None, :], 0)
    real_rows = gather[valid]
    slots = torch.arange(len(plan.members) * plan.width).view(len(plan.members), plan.width)[valid]
    spare = plan.rows - len(plan.members)
    if spare > 0:  # spare rows repeat the first sequence; their outputs are never read back
        valid = torch.cat([valid, valid[:1].expand(spare, -1)])
        gather = torch.cat([gather, gather[:1].expand(spare, -1)])
        lengths = lengths + lengths[:1] * spare
    mask = None if min(lengths) == plan.width else valid[:, None, None, :]
    return HostBlock(Bucket(gather.reshape(-1), mask, lengths), real_rows, slots)


# -- 4. back from the blocks --------------------------------------------------------------------------


def unpad_index(blocks: Sequence[HostBlock], rows: int) -> torch.Tensor:
    """For every packed row, its row in the blocks' concatenated outputs (padding rows: the first, any would do)."""
    unpad = torch.zeros(rows, dtype=torch.long)
    offset, real_rows, block_rows = 0, [], []
    for block in blocks:
        real_rows.append(block.real_rows)
        block_rows.append(offset + block.slots)
        offset += block.bucket.gather.numel() if block.bucket.gather is not None else 0
    unpad[torch.cat(real_rows)] = torch.cat(block_rows)
    return unpad


# -- 5. to the device ----------------------------------------------------------------------------------------


def move_to_device(
    layout: TokenLayout,
    blocks: Sequence[HostBlock],
    unpad: torch.Tensor | None,
    strategy: str,
    device: torch.device,
    square_mask: bool = False,
) -> PackedBatch:
    """The :class:`PackedBatch` on ``device``: every host tensor in one pinned, non-blocking copy per dtype
    (:func:`minilm_npu.devices.to_device`), square masks expanded there."""
    count, padding = len(layout.lengths), layout.rows - layout.total
    # Padding rows of a token gear belong to no sequence: RowLayout's owner ``count``.
    sequence = torch.cat([layout.sequence, torch.full((padding,), count)]) if padding else layout.sequence
    lengths = torch.tensor(layout.lengths)
    host: list[torch.Tensor | None] = [layout.ids, sequence, layout.positions, lengths, unpad]
    for block in blocks:
        host += [block.bucket.gather, block.bucket.mask]
    moved = iter(to_device(host, device))
    ids, sequence, slots, lengths = (cast(torch.Tensor, next(moved)) for _ in range(4))
    rows = RowLayout(sequence, slots, lengths, count, dense=not padding)
    unpad_on_device = next(moved)
    buckets = []
    for block in blocks:
        gather, mask = next(moved), next(moved)
        if square_mask and mask is not None:
            width = mask.shape[-1]
            mask = mask.expand(-1, -1, width, -1).contiguous()
        buckets.append(Bucket(gather, mask, block.bucket.lengths))
    return PackedBatch(ids, rows, layout.starts, layout.lengths, buckets, unpad_on_device, strategy)


# -- all steps -----------------------------------------------------------------------------------------------


def pack(
    batch: Sequence[Sequence[int]],
    strategy: str,
    device: torch.device,
    slack: float = 0.25,
    gears: Callable[[int], int] | None = None,
    row_gears: Callable[[int], int] | None = None,
    square_mask: bool = False,
    token_gears: Callable[[int], int] | None = None,
) -> PackedBatch:
    """Lay a batch of token-id lists end to end and precompute the attention plan.

    Args:
        batch: Token ids per sequence (non-empty lists).
        strategy: One of :data:`ATTENTION_STRATEGIES`.
        device: Where the index tensors go.
        slack: Padding fraction allowed inside one attention block (``"bucketed"``).
        gears: Optional width rounding for padded blocks (static shapes on graph-mode devices).
        row_gears: Optional rounding of a padded block's sequence count (e.g. to a power of two), for the same
            devices; the extra rows repeat the block's first sequence and their outputs are never read back.
        square_mask: Give padded blocks a full ``[rows, 1, width, width]`` key mask (expanded on the device)
            instead of a broadcast ``[rows, 1, 1, width]`` one, for kernels that take no broadcast masks (Ascend).
        token_gears: Optional rounding of the packed tensor's row count (the CPU's bounded set of shapes); the
            padding rows come last and never reach a result.
    """
    if strategy not in ATTENTION_STRATEGIES:
        raise ValueError(f"unknown attention strategy {strategy!r}")
    total = sum(len(ids) for ids in batch)
    rows = token_gears(total) if token_gears else total
    if _is_its_own_block(batch, gears, row_gears):
        return _pack_one(batch[0], strategy, device, rows)
    layout = lay_out_tokens(batch, rows)
    blocks = [gather_block(layout, plan) for plan in plan_blocks(layout.lengths, strategy, slack, gears, row_gears)]
    unpad = unpad_index(blocks, layout.rows) if blocks else None
    return move_to_device(layout, blocks, unpad, strategy, device, square_mask)


def _is_its_own_block(
    batch: Sequence[Sequence[int]], gears: Callable[[int], int] | None, row_gears: Callable[[int], int] | None
) -> bool:
    """One sequence that no gear would pad: the packed tensor is its attention block as it is."""
    return (
        len(batch) == 1
        and (gears is None or gears(len(batch[0])) == len(batch[0]))
        and (row_gears is None or row_gears(1) == 1)
    )


def _pack_one(ids: Sequence[int], strategy: str, device: torch.device, rows: int | None = None) -> PackedBatch:
    """:func:`pack` for one sequence (a query, an interactive request), with the index work a batch needs left out.

    A lone sequence is its own attention block: no gather, no mask, no unpadding, pooling over every row. This
    keeps the general bookkeeping and two index ops per layer off the batch-1 latency. (A device whose widths come in
    gears pads even one sequence, so :func:`pack` sends it here only when its length is a gear.) Padding rows of a
    token gear (``rows`` past the length) stay out of attention (its block is the first ``length`` rows) and out
    of pooling (they belong to no sequence).
    """
    length = len(ids)
    padding = max(0, (rows or length) - length)
    real = torch.arange(length + padding) < length
    tensors: list[torch.Tensor | None] = [
        torch.tensor([*ids, *[0] * padding], dtype=torch.long),
        (~real).long(),  # sequence 0, or 1 (= the count: no sequence) on padding rows
        torch.arange(length + padding) * real,
        torch.tensor([length]),
    ]
    ids_t, sequence, slots, lengths = (cast(torch.Tensor, moved) for moved in to_device(tensors, device))
    buckets = [Bucket(None, None, [length])] if strategy in ("bucketed", "padded") else []
    layout = RowLayout(sequence, slots, lengths, 1, dense=not padding)
    return PackedBatch(ids_t, layout, [0], [length], buckets, None, strategy)
