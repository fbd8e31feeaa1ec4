"""A lean BERT encoder that runs on packed tokens: the packed engine's model.

It runs BERT and the RoBERTa family (XLM-RoBERTa, RoBERTa): the same post-LN encoder; the RoBERTa family numbers
positions from ``pad_token_id + 1`` on (a token equal to the padding id keeps position ``pad_token_id``, as in
transformers) and has one token type.

Every sequence of a batch is laid end to end in one ``[total_tokens, hidden]`` tensor (:mod:`.packing`).
Embeddings, every linear layer, layer norms and GELU (exact erf, as the reference) run on that tensor, and so does
pooling (:mod:`.head`), so no FLOP is spent on padding. Only attention needs to know which token belongs to which
sequence; it goes through a strategy chosen per device type (see :func:`minilm_npu.engine.policy.attention_plan`):

* ``"per_sequence"``: one ``scaled_dot_product_attention`` call per sequence on a slice of the packed tensor;
* ``"bucketed"``: sequences of similar length are gathered into small padded blocks (one SDPA call per block,
  with a key mask), then scattered back — padding only inside attention, and little of it;
* ``"padded"``: a single padded block (the length-sorted batch); what accelerators like best;
* ``"varlen"``: one call of a device kernel that takes the packed tokens and cumulative lengths directly (Ascend's
  ``npu_fusion_attention`` with ``input_layout="TND"``, given as ``PackedBert(varlen=...)``).

Index tensors for all of this are built once per forward (:class:`~.packing.PackedBatch`), never per layer. The
checkpoint is read and checked by :mod:`.checkpoint`; Q, K and V are fused into one linear layer here. Linear layers
are plain callables built by a factory given at construction, so the CPU engines choose theirs (oneDNN float32,
int8) before the model exists (:mod:`minilm_npu.engine.packed`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The checkpoint and packing names are re-exported: ``engine.bert`` was their home, and callers still import them here.
from .checkpoint import (
    BERT_ARCHITECTURES,
    IGNORED_PREFIXES,
    BertConfig,
    check_weight_names,
    expected_shapes,
    load_weights,
)
from .packing import ATTENTION_STRATEGIES, Bucket, PackedBatch, pack, plan_buckets

__all__ = [
    "ATTENTION_STRATEGIES",
    "BERT_ARCHITECTURES",
    "IGNORED_PREFIXES",
    "LINEAR_ROLES",
    "BertConfig",
    "Bucket",
    "DenseLinear",
    "Layer",
    "Linear",
    "LinearFactory",
    "PackedBatch",
    "PackedBert",
    "check_weight_names",
    "expected_shapes",
    "load_weights",
    "pack",
    "plan_buckets",
]

Linear = Callable[[torch.Tensor], torch.Tensor]
#: Builds one linear layer: ``(layer_index, role, weight, bias, gelu) -> Linear``; ``role`` is one of
#: :data:`LINEAR_ROLES`, ``weight``/``bias`` are already on the model's device in its dtype.
LinearFactory = Callable[[int, str, torch.Tensor, torch.Tensor, bool], Linear]
LINEAR_ROLES = ("qkv", "attn_out", "ffn_in", "ffn_out")


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
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        # None: F.gelu as it is when the layer is built (not bound when this module was imported).
        self.weight, self.bias, self.gelu, self.activation = weight, bias, gelu, activation or F.gelu

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
        gelu: Callable[[torch.Tensor], torch.Tensor] | None = None,
        varlen: Callable[..., torch.Tensor] | None = None,
    ):
        gelu = gelu or F.gelu  # looked up when the model is built, like DenseLinear's
        self.config, self.device, self.dtype, self.varlen, self.gelu = config, device, dtype, varlen, gelu
        make_linear = make_linear or (lambda _n, _role, weight, bias, act: DenseLinear(weight, bias, act, gelu))

        def get(name: str) -> torch.Tensor:
            return weights[name].to(device=device, dtype=dtype).contiguous()

        self.word = get("embeddings.word_embeddings.weight")
        # Every token has token type 0 (single-sentence embeddings), so its embedding folds into the positions.
        self.position = (
            weights["embeddings.position_embeddings.weight"] + weights["embeddings.token_type_embeddings.weight"][0]
        ).to(device=device, dtype=dtype)
        # A pair's second text has token type 1 (cross-encoders on BERT): what it adds over type 0, per type.
        types = weights["embeddings.token_type_embeddings.weight"]
        self.type_delta = (types - types[0]).to(device=device, dtype=dtype) if types.shape[0] > 1 else None
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
            q, k, v = qkv[: sum(packed.lengths)].view(-1, 3, heads, head_dim).unbind(1)
            ends = list(itertools.accumulate(packed.lengths))
            return _pad_rows(self.varlen(q, k, v, ends, head_dim**-0.5).reshape(-1, hidden), qkv.shape[0])
        if packed.strategy == "per_sequence":
            outputs = []
            for start, length in zip(packed.starts, packed.lengths):
                q, k, v = qkv[start : start + length].view(length, 3, heads, head_dim).permute(1, 2, 0, 3)
                outputs.append(F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(length, hidden))
            return _pad_rows(torch.cat(outputs) if len(outputs) > 1 else outputs[0], qkv.shape[0])
        outputs = []
        for bucket in packed.buckets:
            rows = len(bucket.lengths)
            # A block without a gather index is the packed tensor's first rows (its token-gear padding left out).
            block = qkv[: sum(bucket.lengths)] if bucket.gather is None else qkv.index_select(0, bucket.gather)
            block = block.view(rows, -1, 3, heads, head_dim)
            q, k, v = block.permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bucket.mask)
            outputs.append(context.transpose(1, 2).reshape(-1, hidden))
        blocks = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        return _pad_rows(blocks, qkv.shape[0]) if packed.unpad is None else blocks.index_select(0, packed.unpad)

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

    def forward(self, packed: PackedBatch, token_types: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``[R, H]`` of the last layer for a packed batch: one row per token, then the padding rows
        of a token gear (never read: they belong to no sequence); ``token_types`` (``[R]`` int64, on the device)
        where some tokens are not of type 0 (the second text of a pair)."""
        eps = self.config.layer_norm_eps
        width = (self.config.hidden_size,)
        positions = self.position_ids(packed.ids, packed.rows.slots)
        x = self.word.index_select(0, packed.ids) + self.position.index_select(0, positions)
        if token_types is not None and self.type_delta is not None:
            x = x + self.type_delta.index_select(0, token_types)
        x = F.layer_norm(x, width, *self.ln_embed, eps)
        for layer in self.layers:
            context = self.attention(layer.qkv(x), packed)
            x = F.layer_norm(layer.attn_out(context).add_(x), width, *layer.ln1, eps)
            x = F.layer_norm(layer.ffn_out(layer.ffn_in(x)).add_(x), width, *layer.ln2, eps)
        return x


def _pad_rows(context: torch.Tensor, rows: int) -> torch.Tensor:
    """``context`` with zero rows appended up to ``rows``: the padding rows of a token gear (:mod:`.packing`) are
    in no sequence, and zeros keep the packed rows aligned for the layers after attention."""
    return F.pad(context, (0, 0, 0, rows - context.shape[0])) if context.shape[0] < rows else context
