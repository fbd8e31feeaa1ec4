"""sentence-transformers' modules after the transformer: pooling and Dense layers, one implementation for every backend.

The packed engine (eager and static-shape graphs) and the transformers reference backend all hand their last
hidden states here as one flat ``[rows, hidden]`` tensor plus a :class:`RowLayout` saying which sequence each row
belongs to; this module does what sentence-transformers' ``Pooling`` and ``Dense`` modules do with them. The
model's final ``Normalize`` is left to the encoder's post stage (``normalize_embeddings=False`` skips it).

Pooling follows sentence-transformers' padded path (its CPU and default one), mode by mode:

* ``mean``, ``mean_sqrt_len_tokens``, ``weightedmean``, ``cls``, ``lasttoken`` are weighted sums of rows: one
  ``[sequences, rows] @ [rows, hidden]`` matmul each, in float32 (a one-hot row picks a token exactly);
* ``max`` is a segment maximum (``scatter_reduce``), ``-inf`` where a sequence has no token to pool;
* several modes are concatenated in sentence-transformers' order;
* ``include_prompt=False`` leaves the prompt's tokens out of pooling exactly as sentence-transformers does (its
  attention mask zeroed there): ``cls`` then takes the first token after the prompt, ``weightedmean`` keeps the
  tokens' original position weights, and a sequence that is all prompt pools to zeros (``-inf`` for ``max``).

Index tensors are built with tensor operations only (no host synchronisation), so the static-shape forward passes
of :mod:`minilm_npu.engine.graphs` can record them in a device graph.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..modelconfig import DenseLayer, ModelFilesError
from ..modelfiles import ModelFiles

log = logging.getLogger(__name__)


@dataclass
class RowLayout:
    """Which sequence each row of a flat ``[rows, hidden]`` tensor belongs to.

    Attributes:
        sequence: ``[rows]`` int64: the row's sequence, or ``count`` for a row no sequence owns (padding).
        slots: ``[rows]`` int64: the row's index inside its sequence (0 for its first token).
        lengths: ``[count]`` int64: real tokens per sequence.
        count: How many sequences.
        dense: Every row belongs to a sequence, in order (sequences end to end: no padding rows).
    """

    sequence: torch.Tensor
    slots: torch.Tensor
    lengths: torch.Tensor
    count: int
    dense: bool = False

    @classmethod
    def packed(cls, lengths: Sequence[int]) -> RowLayout:
        """Sequences laid end to end (the packed engine), built on the host."""
        lengths_t = torch.tensor(lengths, dtype=torch.long)
        rows = torch.repeat_interleave(torch.arange(len(lengths)), lengths_t)
        starts = torch.cumsum(lengths_t, 0) - lengths_t
        return cls(rows, torch.arange(int(lengths_t.sum())) - starts[rows], lengths_t, len(lengths), dense=True)

    @classmethod
    def padded(cls, lengths: torch.Tensor, width: int) -> RowLayout:
        """``len(lengths)`` rows of ``width`` slots each (padded batches, static shapes), on ``lengths``' device."""
        count = lengths.shape[0]
        slots = torch.arange(width, device=lengths.device)
        owner = torch.arange(count, device=lengths.device)[:, None].expand(-1, width)
        rows = torch.where(slots[None, :] < lengths[:, None], owner, count).reshape(-1)
        return cls(rows, slots.repeat(count), lengths, count)


def _activation(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A Dense module's activation from its saved class path, as sentence-transformers loads it without
    ``trust_remote_code``: a ``torch.`` ``nn.Module`` class is instantiated, anything else falls back to Tanh."""
    if not path.startswith("torch."):
        log.warning("Dense activation %r is not a torch class; using Tanh, as sentence-transformers does", path)
        return torch.nn.Tanh()
    module_name, _, class_name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ModelFilesError(f"Dense activation {path!r} does not exist in this torch") from None
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise ModelFilesError(f"Dense activation {path!r} is not a torch.nn.Module class")
    return found()


class Dense:
    """One sentence-transformers Dense module, float32, its weights from safetensors (names and shapes checked).

    Raises:
        ModelFilesError: unreadable weights, or names/shapes that do not match the module's config.
    """

    def __init__(self, layer: DenseLayer, device: torch.device):
        from safetensors.torch import load_file

        expected = {"linear.weight": (layer.out_features, layer.in_features)}
        if layer.bias:
            expected["linear.bias"] = (layer.out_features,)
        if layer.residual and layer.in_features != layer.out_features:
            expected["residual.weight"] = (layer.out_features, layer.in_features)
        try:
            stored = load_file(str(layer.weights_path))
        except Exception as err:  # safetensors raises its own error types for truncated or foreign files
            raise ModelFilesError(f"cannot read {layer.weights_path}: {type(err).__name__}: {err}") from None
        found = {name: tuple(tensor.shape) for name, tensor in stored.items()}
        if found != expected:
            raise ModelFilesError(f"{layer.weights_path} holds {found}; its config.json needs {expected}")
        weights = {name: tensor.to(device=device, dtype=torch.float32) for name, tensor in stored.items()}
        self.weight, self.bias = weights["linear.weight"], weights.get("linear.bias")
        self.residual = weights.get("residual.weight") if layer.residual else None
        self.add_input = layer.residual and self.residual is None
        self.activation = _activation(layer.activation).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(F.linear(x, self.weight, self.bias))
        if self.add_input:
            return out + x
        return out + F.linear(x, self.residual) if self.residual is not None else out


class SentenceHead:
    """Pooling and Dense modules of one model on one device: hidden states in, sentence embeddings out.

    Args:
        model_files: The model (its pooling modes, ``include_prompt`` and Dense modules).
        device: Where the hidden states are.
    """

    def __init__(self, model_files: ModelFiles, device: torch.device):
        self.modes = model_files.pooling_modes
        self.include_prompt = model_files.include_prompt
        width = model_files.hidden_size * len(self.modes)
        for layer in model_files.dense:
            if layer.in_features != width:
                raise ModelFilesError(
                    f"{layer.directory / 'config.json'}: in_features {layer.in_features}, but the module before "
                    f"it gives {width} values"
                )
            width = layer.out_features
        self.dense = [Dense(layer, device) for layer in model_files.dense]
        self.dimension = model_files.dimension

    def __call__(self, hidden: torch.Tensor, layout: RowLayout, prompt_length: int = 0) -> torch.Tensor:
        """Sentence embeddings ``[layout.count, dimension]`` float32, before the model's final Normalize.

        Args:
            hidden: ``[rows, hidden]`` last hidden states, any float dtype.
            layout: Which sequence each row belongs to.
            prompt_length: Tokens of the prompt at the start of every sequence (after its first special token);
                left out of pooling only when the model's ``include_prompt`` is False.
        """
        skip = 0 if self.include_prompt else prompt_length
        hidden = hidden.float()
        pooled = [self.pool(hidden, layout, mode, skip) for mode in self.modes]
        out = pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)
        for dense in self.dense:
            out = dense(out)
        return out

    @staticmethod
    def pool(hidden: torch.Tensor, layout: RowLayout, mode: str, skip: int = 0) -> torch.Tensor:
        """One pooling mode over float32 ``hidden``, leaving each sequence's first ``skip`` tokens out."""
        count, rows, slots = layout.count, layout.sequence, layout.slots
        if count == 1 and layout.dense and not skip and mode in ("mean", "cls", "lasttoken", "max"):
            # One sequence, every row its own (a query): no index work at all.
            if mode == "mean":
                return hidden.mean(dim=0, keepdim=True)
            if mode == "max":
                return hidden.amax(dim=0, keepdim=True)
            return hidden[:1] if mode == "cls" else hidden[-1:]
        # Each row's sequence length (rows past the last sequence, padding, read the last one's: never used).
        length = layout.lengths.index_select(0, rows if layout.dense else rows.clamp(max=count - 1))
        if mode == "max":
            target = torch.where(slots >= skip, rows, count)[:, None].expand(-1, hidden.shape[1])
            empty = hidden.new_full((count + 1, hidden.shape[1]), float("-inf"))
            return empty.scatter_reduce(0, target, hidden, "amax")[:count]
        if mode == "mean" and not skip:  # the common case, in the fewest operations
            weight = length.float().reciprocal()
        elif mode == "cls":  # sentence-transformers: the first pooled token, or the sequence's first if none is
            weight = (slots == torch.where(length > skip, skip, 0)).float()
        elif mode == "lasttoken":
            weight = ((slots == length - 1) & (length > skip)).float()
        else:
            kept = (slots >= skip).float()
            pooled_tokens = (length - skip).clamp(min=1).float()
            if mode == "mean":
                weight = kept / pooled_tokens
            elif mode == "mean_sqrt_len_tokens":
                weight = kept / pooled_tokens.sqrt()
            elif mode == "weightedmean":  # weights 1, 2, ... by position; the prompt's tokens keep theirs
                total = (length * (length + 1) - skip * (skip + 1)).clamp(min=1).float() / 2
                weight = kept * (slots + 1).float() / total
            else:
                raise ValueError(f"unknown pooling mode {mode!r}")
        weights = hidden.new_zeros(count + 1, rows.shape[0])
        weights[rows, torch.arange(rows.shape[0], device=rows.device)] = weight
        return torch.mm(weights[:count], hidden)
