"""A lean BERT encoder that runs on packed tokens: the packed engine's model, in one file.

It runs BERT and the RoBERTa family (XLM-RoBERTa, RoBERTa): the same post-LN encoder; the RoBERTa family numbers
positions from ``pad_token_id + 1`` on (a token equal to the padding id keeps position ``pad_token_id``, as in
transformers) and has one token type.

Every sequence of a batch is laid end to end in one ``[total_tokens, hidden]`` tensor. Embeddings, every linear
layer, layer norms, GELU (exact erf, as the reference) and pooling run on that tensor, so no FLOP is spent on
padding. Only attention needs to know which token belongs to which sequence; it goes through a strategy chosen
per device type (see :func:`minilm_npu.engine.policy.attention_plan`):

* ``"per_sequence"``: one ``scaled_dot_product_attention`` call per sequence on a slice of the packed tensor;
* ``"bucketed"``: sequences of similar length are gathered into small padded blocks (one SDPA call per block,
  with a key mask), then scattered back — padding only inside attention, and little of it;
* ``"padded"``: a single padded block (the length-sorted batch); what accelerators like best;
* ``"varlen"``: one call of a device kernel that takes the packed tokens and cumulative lengths directly (Ascend's
  ``npu_fusion_attention`` with ``input_layout="TND"``, given as ``PackedBert(varlen=...)``).

Index tensors for all of this are built once per forward (:class:`PackedBatch`), never per layer. Pooling and the
model's other sentence-transformers modules are :mod:`minilm_npu.engine.head`'s, fed the :class:`TokenLayout` built
here.
Weights come from safetensors with every name and shape checked before anything is loaded; Q, K and V are fused
into one linear layer. Linear layers are plain callables built by a factory given at construction, so the CPU
engines choose theirs (oneDNN float32, int8) before the model exists (:mod:`minilm_npu.engine.packed`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..devices import to_device
from ..modelconfig import SUPPORTED_MODEL_TYPES, ModelFilesError, position_offset
from .head import TokenLayout

ATTENTION_STRATEGIES = ("per_sequence", "bucketed", "padded", "varlen")
#: Per model type: the class-name stem of its architectures and the prefix its task models put on encoder weights.
MODEL_FAMILIES = {
    "bert": ("Bert", "bert."),
    "roberta": ("Roberta", "roberta."),
    "xlm-roberta": ("XLMRoberta", "roberta."),
}
#: Architectures whose checkpoints hold exactly this encoder (embeddings + post-LN layers, erf GELU), per stem.
ARCHITECTURE_SUFFIXES = ("Model", "ForMaskedLM", "ForPreTraining", "ForSequenceClassification")
#: Checkpoint entries that are allowed but unused: buffers and the task heads sentence embeddings never use.
IGNORED_PREFIXES = ("embeddings.position_ids", "embeddings.token_type_ids", "pooler.", "cls.", "lm_head.")

Linear = Callable[[torch.Tensor], torch.Tensor]
#: Builds one linear layer: ``(layer_index, role, weight, bias, gelu) -> Linear``; ``role`` is one of
#: :data:`LINEAR_ROLES`, ``weight``/``bias`` are already on the model's device in its dtype.
LinearFactory = Callable[[int, str, torch.Tensor, torch.Tensor, bool], Linear]
LINEAR_ROLES = ("qkv", "attn_out", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class BertConfig:
    """The architecture numbers of a BERT checkpoint, from its ``config.json``."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    max_position_embeddings: int
    type_vocab_size: int
    #: Position of a sequence's first token: 0 for BERT, ``pad_token_id + 1`` for the RoBERTa family.
    position_offset: int = 0
    pad_token_id: int = 0
    #: Prefix of the encoder's weights in task checkpoints (``bert.``, ``roberta.``).
    weight_prefix: str = "bert."

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> BertConfig:
        """Read and check a parsed ``config.json``.

        Raises:
            ModelFilesError: not a BERT checkpoint this engine can run exactly (with the reason).
        """
        model_type = config.get("model_type")
        architectures = config.get("architectures") or []
        stem, prefix = MODEL_FAMILIES.get(model_type, ("", ""))
        known = {stem + suffix for suffix in ARCHITECTURE_SUFFIXES}
        if model_type not in SUPPORTED_MODEL_TYPES or (architectures and not set(architectures) & known):
            raise ModelFilesError(
                f"the packed engine runs {', '.join(SUPPORTED_MODEL_TYPES)} encoders; this config.json has "
                f"model_type={model_type!r}, architectures={architectures}"
            )
        if config.get("hidden_act", "gelu") != "gelu":
            raise ModelFilesError(f"hidden_act {config['hidden_act']!r} is not supported (only exact 'gelu')")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ModelFilesError(
                f"position_embedding_type {config['position_embedding_type']!r} is not supported (only 'absolute')"
            )
        try:
            parsed = cls(
                vocab_size=int(config["vocab_size"]),
                hidden_size=int(config["hidden_size"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]),
                intermediate_size=int(config["intermediate_size"]),
                layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
                max_position_embeddings=int(config.get("max_position_embeddings", 512)),
                type_vocab_size=int(config.get("type_vocab_size", 2)),
                position_offset=position_offset(config),
                pad_token_id=int(config.get("pad_token_id") or 0),
                weight_prefix=prefix,
            )
        except KeyError as err:
            raise ModelFilesError(f"config.json lacks {err.args[0]!r}, which a BERT config must have") from None
        except (TypeError, ValueError) as err:
            raise ModelFilesError(f"config.json has a malformed number: {err}") from None
        if (
            min(
                parsed.vocab_size,
                parsed.hidden_size,
                parsed.num_layers,
                parsed.num_heads,
                parsed.intermediate_size,
                parsed.max_position_embeddings,
                parsed.type_vocab_size,
            )
            < 1
        ):
            raise ModelFilesError("config.json has a size that is not positive")
        if parsed.hidden_size % parsed.num_heads:
            raise ModelFilesError(
                f"hidden_size {parsed.hidden_size} is not a multiple of num_attention_heads {parsed.num_heads}"
            )
        return parsed


def expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint must hold (names without the ``bert.``/``roberta.`` prefix) and its shape."""
    h, i = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(config.num_layers):
        p = f"encoder.layer.{n}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + name + ".weight"] = (h, h)
            shapes[p + name + ".bias"] = (h,)
        shapes[p + "intermediate.dense.weight"] = (i, h)
        shapes[p + "intermediate.dense.bias"] = (i,)
        shapes[p + "output.dense.weight"] = (h, i)
        shapes[p + "output.dense.bias"] = (h,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"] = (h,)
            shapes[p + name + ".bias"] = (h,)
    return shapes


def _shorten(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_weight_names(found: dict[str, tuple[int, ...]], config: BertConfig) -> dict[str, str]:
    """Match a checkpoint's tensor names and shapes against what ``config`` needs.

    Args:
        found: Tensor name -> shape, as stored (with or without the ``bert.``/``roberta.`` prefix).
        config: The architecture.

    Returns:
        Expected name -> stored name.

    Raises:
        ModelFilesError: listing every missing, unexpected and mis-shaped tensor.
    """
    expected = expected_shapes(config)
    stored: dict[str, str] = {}
    unexpected = []
    for name in found:
        short = name.removeprefix(config.weight_prefix)
        if short in expected:
            stored[short] = name
        elif not short.startswith(IGNORED_PREFIXES):
            unexpected.append(name)
    missing = [name for name in expected if name not in stored]
    mismatched = [
        f"{stored[n]} {list(found[stored[n]])} (expected {list(shape)})"
        for n, shape in expected.items()
        if n in stored and tuple(found[stored[n]]) != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_shorten(missing)}")
    if unexpected:
        problems.append(f"unexpected {_shorten(unexpected)}")
    if mismatched:
        problems.append(f"wrong shape {_shorten(mismatched)}")
    if problems:
        raise ModelFilesError("the weights do not match config.json: " + "; ".join(problems))
    return stored


def load_weights(path: str | Path, config: BertConfig) -> dict[str, torch.Tensor]:
    """Load a checkpoint from safetensors (never pickle), checking every name and shape first.

    Returns:
        Expected (unprefixed) name -> float32 CPU tensor.

    Raises:
        ModelFilesError: unreadable file, or names/shapes that do not match ``config``.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
            stored = check_weight_names(shapes, config)
            return {name: handle.get_tensor(key).float() for name, key in stored.items()}
    except ModelFilesError:
        raise
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise ModelFilesError(f"cannot read weights {path}: {type(err).__name__}: {err}") from None


# -- packing -------------------------------------------------------------------------------------------------


@dataclass
class Bucket:
    """Sequences whose attention runs as one padded block.

    Attributes:
        gather: ``[n * width]`` rows of the packed tensor (padding slots repeat a valid row; they are masked);
            None when the packed tensor already is the block (the static-shape layout of :mod:`.graphs`).
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

    ids: torch.Tensor  # [T] int64
    layout: TokenLayout  # which sequence each row belongs to and where in it (pooling; positions)
    starts: list[int]
    lengths: list[int]
    buckets: list[Bucket]
    unpad: torch.Tensor | None  # rows of the concatenated bucket outputs, in packed order (None: identity)
    strategy: str


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


def pack(
    batch: Sequence[Sequence[int]],
    strategy: str,
    device: torch.device,
    slack: float = 0.25,
    gears: Callable[[int], int] | None = None,
    row_gears: Callable[[int], int] | None = None,
    square_mask: bool = False,
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
    """
    if strategy not in ATTENTION_STRATEGIES:
        raise ValueError(f"unknown attention strategy {strategy!r}")
    if (
        len(batch) == 1
        and (gears is None or gears(len(batch[0])) == len(batch[0]))
        and (row_gears is None or row_gears(1) == 1)
    ):
        return _pack_one(batch[0], strategy, device)
    lengths = [len(ids) for ids in batch]
    starts = list(itertools.accumulate([0] + lengths[:-1]))
    total = sum(lengths)
    ids = torch.tensor(list(itertools.chain.from_iterable(batch)), dtype=torch.long)
    layout = TokenLayout.packed(lengths)
    buckets: list[Bucket] = []
    unpad = None
    if strategy in ("bucketed", "padded"):
        groups = [list(range(len(batch)))] if strategy == "padded" else plan_buckets(lengths, slack)
        flat_rows = []
        offset = 0
        for group in groups:
            group_lengths = [lengths[i] for i in group]
            width = max(group_lengths)
            width = gears(width) if gears else width
            slot = torch.arange(width)
            group_starts = torch.tensor([starts[i] for i in group])
            group_len = torch.tensor(group_lengths)
            valid = slot[None, :] < group_len[:, None]
            # Padding slots point at the sequence's own first row: any valid row would do, they are masked.
            gather = group_starts[:, None] + torch.where(valid, slot[None, :], 0)
            real = len(group)
            padded_rows = row_gears(real) if row_gears else real
            if padded_rows > real:
                extra = padded_rows - real
                valid = torch.cat([valid, valid[:1].expand(extra, -1)])
                gather = torch.cat([gather, gather[:1].expand(extra, -1)])
                group_lengths = group_lengths + group_lengths[:1] * extra
            mask = None if min(group_lengths) == width else valid[:, None, None, :]
            buckets.append(Bucket(gather.reshape(-1), mask, group_lengths))
            rows = offset + torch.arange(padded_rows * width).view(padded_rows, width)
            flat_rows.append((gather[:real][valid[:real]], rows[:real][valid[:real]]))
            offset += padded_rows * width
        packed_rows = torch.cat([g for g, _ in flat_rows])
        block_rows = torch.cat([r for _, r in flat_rows])
        unpad = torch.empty(total, dtype=torch.long)
        unpad[packed_rows] = block_rows
    # Everything was built on the host; it moves in one pinned, non-blocking copy per dtype (devices.to_device).
    tensors = [ids, layout.rows, layout.slots, layout.lengths, unpad]
    for bucket in buckets:
        tensors += [bucket.gather, bucket.mask]
    moved = iter(to_device(tensors, device))
    ids = next(moved)
    layout = TokenLayout(next(moved), next(moved), next(moved), len(batch), dense=True)
    unpad = next(moved)
    for bucket in buckets:
        bucket.gather, bucket.mask = next(moved), next(moved)
        if square_mask and bucket.mask is not None:
            width = bucket.mask.shape[-1]
            bucket.mask = bucket.mask.expand(-1, -1, width, -1).contiguous()
    return PackedBatch(ids, layout, starts, lengths, buckets, unpad, strategy)


def _pack_one(ids: Sequence[int], strategy: str, device: torch.device) -> PackedBatch:
    """:func:`pack` for one sequence (a query, an interactive request), with the index work a batch needs left out.

    A lone sequence is its own attention block: no gather, no mask, no unpadding, mean pooling over every row. This
    takes the batch-1 latency down by the ~0.1-0.2 ms that :func:`pack`'s general bookkeeping and two index ops
    per layer cost. (A device whose widths come in gears pads even one sequence, so :func:`pack` sends it here only
    when its length is a gear.)
    """
    length = len(ids)
    tensors = [torch.tensor(ids, dtype=torch.long), torch.zeros(length, dtype=torch.long), torch.arange(length)]
    ids_t, rows, slots, lengths = to_device(tensors + [torch.tensor([length])], device)
    buckets = [Bucket(None, None, [length])] if strategy in ("bucketed", "padded") else []
    return PackedBatch(ids_t, TokenLayout(rows, slots, lengths, 1, dense=True), [0], [length], buckets, None, strategy)


# -- the model -----------------------------------------------------------------------------------------------


class DenseLinear:
    """``x @ W.T + b`` in the weights' dtype, optionally followed by exact GELU: the float engines' linear.

    ``activation`` is the device's exact GELU (:func:`minilm_npu.devices.exact_gelu`: ``F.gelu`` is not exact on
    every device).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        gelu: bool = False,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.gelu,
    ):
        self.weight, self.bias, self.gelu, self.activation = weight, bias, gelu, activation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return self.activation(out) if self.gelu else out


@dataclass
class Layer:
    """One transformer block: fused QKV, attention output, feed-forward (GELU inside ffn_in), two post-LNs."""

    qkv: Linear
    attn_out: Linear
    ln1: tuple[torch.Tensor, torch.Tensor]
    ffn_in: Linear
    ffn_out: Linear
    ln2: tuple[torch.Tensor, torch.Tensor]


class PackedBert:
    """BERT forward on packed tokens.

    Args:
        config: The architecture.
        weights: Expected name -> tensor, as :func:`load_weights` returns them.
        device: Where the model runs.
        dtype: Float dtype of activations and dense weights (the int8 engine passes float32).
        make_linear: Builds each linear layer (see :data:`LinearFactory`); defaults to :class:`DenseLinear` with
            ``gelu`` as its activation.
        gelu: The device's exact GELU (see :func:`minilm_npu.devices.exact_gelu`).
        varlen: The device's attention over packed sequences (``"varlen"`` strategy), if it has one; see
            :func:`minilm_npu.devices.varlen_attention`.
    """

    def __init__(
        self,
        config: BertConfig,
        weights: dict[str, torch.Tensor],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        make_linear: LinearFactory | None = None,
        gelu: Callable[[torch.Tensor], torch.Tensor] = F.gelu,
        varlen: Callable[..., torch.Tensor] | None = None,
    ):
        self.config, self.device, self.dtype, self.varlen, self.gelu = config, device, dtype, varlen, gelu
        make_linear = make_linear or (lambda _n, _role, weight, bias, act: DenseLinear(weight, bias, act, gelu))

        def get(name: str) -> torch.Tensor:
            return weights[name].to(device=device, dtype=dtype).contiguous()

        self.word = get("embeddings.word_embeddings.weight")
        # Every token has token type 0 (single-sentence embeddings), so its embedding folds into the positions.
        self.position = (
            weights["embeddings.position_embeddings.weight"] + weights["embeddings.token_type_embeddings.weight"][0]
        ).to(device=device, dtype=dtype)
        self.ln_embed = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        self.layers: list[Layer] = []
        for n in range(config.num_layers):
            p = f"encoder.layer.{n}."
            qkv_w = torch.cat([weights[p + f"attention.self.{m}.weight"] for m in ("query", "key", "value")])
            qkv_b = torch.cat([weights[p + f"attention.self.{m}.bias"] for m in ("query", "key", "value")])
            cast = lambda t: t.to(device=device, dtype=dtype).contiguous()  # noqa: E731
            self.layers.append(
                Layer(
                    qkv=make_linear(n, "qkv", cast(qkv_w), cast(qkv_b), False),
                    attn_out=make_linear(
                        n,
                        "attn_out",
                        get(p + "attention.output.dense.weight"),
                        get(p + "attention.output.dense.bias"),
                        False,
                    ),
                    ln1=(get(p + "attention.output.LayerNorm.weight"), get(p + "attention.output.LayerNorm.bias")),
                    ffn_in=make_linear(
                        n, "ffn_in", get(p + "intermediate.dense.weight"), get(p + "intermediate.dense.bias"), True
                    ),
                    ffn_out=make_linear(
                        n, "ffn_out", get(p + "output.dense.weight"), get(p + "output.dense.bias"), False
                    ),
                    ln2=(get(p + "output.LayerNorm.weight"), get(p + "output.LayerNorm.bias")),
                )
            )

    def attention(self, qkv: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
        """Multi-head self-attention per sequence: ``[T, 3H]`` fused projections in, ``[T, H]`` context out."""
        heads, head_dim = self.config.num_heads, self.config.head_dim
        hidden = heads * head_dim
        if packed.strategy == "varlen":
            q, k, v = qkv.view(-1, 3, heads, head_dim).unbind(1)
            ends = list(itertools.accumulate(packed.lengths))
            return self.varlen(q, k, v, ends, head_dim**-0.5).reshape(-1, hidden)
        if packed.strategy == "per_sequence":
            outputs = []
            for start, length in zip(packed.starts, packed.lengths):
                q, k, v = qkv[start : start + length].view(length, 3, heads, head_dim).permute(1, 2, 0, 3)
                outputs.append(F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(length, hidden))
            return torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        outputs = []
        for bucket in packed.buckets:
            rows = len(bucket.lengths)
            block = qkv if bucket.gather is None else qkv.index_select(0, bucket.gather)
            block = block.view(rows, -1, 3, heads, head_dim)
            q, k, v = block.permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bucket.mask)
            outputs.append(context.transpose(1, 2).reshape(-1, hidden))
        blocks = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        return blocks if packed.unpad is None else blocks.index_select(0, packed.unpad)

    def position_ids(self, ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Position ids of packed tokens from their slots in their sequences: the slots themselves for BERT; for the
        RoBERTa family transformers' rule, ``pad_token_id`` + the count of non-padding tokens up to and including
        this one, or ``pad_token_id`` itself for a token equal to it (a literal ``<pad>`` in a text)."""
        if not self.config.position_offset:
            return slots
        pad = self.config.pad_token_id
        real = ids.ne(pad).long()
        seen = torch.cumsum(real, 0)
        first = torch.arange(ids.shape[0], device=ids.device) - slots  # each token's sequence's first row
        return (seen - seen.index_select(0, first) + real.index_select(0, first)) * real + pad

    def forward(self, packed: PackedBatch) -> torch.Tensor:
        """Hidden states ``[T, H]`` of the last layer for a packed batch."""
        eps = self.config.layer_norm_eps
        width = (self.config.hidden_size,)
        positions = self.position_ids(packed.ids, packed.layout.slots)
        x = self.word.index_select(0, packed.ids) + self.position.index_select(0, positions)
        x = F.layer_norm(x, width, *self.ln_embed, eps)
        for layer in self.layers:
            context = self.attention(layer.qkv(x), packed)
            x = F.layer_norm(layer.attn_out(context).add_(x), width, *layer.ln1, eps)
            x = F.layer_norm(layer.ffn_out(layer.ffn_in(x)).add_(x), width, *layer.ln2, eps)
        return x
