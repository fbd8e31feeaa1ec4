"""A BERT or RoBERTa-family checkpoint read for the packed engine: its architecture from ``config.json``, its weights
from safetensors.

XLM-RoBERTa and RoBERTa have BERT's encoder exactly; they differ in where positions start (``pad_token_id + 1``,
:attr:`BertConfig.position_offset`), in having one token type, and in the prefix their task checkpoints put on the
encoder's weights (``roberta.``).

Every name and shape is checked before anything is loaded, and anything this engine cannot run exactly (another
architecture, another activation, relative positions) is refused with the reason, so a wrong model fails at load
time with a message instead of giving wrong vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..modelconfig import SUPPORTED_MODEL_TYPES, position_offset
from ..modelfiles import ModelFilesError

#: Per model type: the class-name stem of its architectures and the prefix its task models put on encoder weights.
MODEL_FAMILIES = {
    "bert": ("Bert", "bert."),
    "roberta": ("Roberta", "roberta."),
    "xlm-roberta": ("XLMRoberta", "roberta."),
}
#: Architectures whose checkpoints hold exactly this encoder (embeddings + post-LN layers, erf GELU), per stem.
ARCHITECTURE_SUFFIXES = ("Model", "ForMaskedLM", "ForPreTraining", "ForSequenceClassification")
BERT_ARCHITECTURES = tuple("Bert" + suffix for suffix in ARCHITECTURE_SUFFIXES)
#: Checkpoint entries that are allowed but unused: buffers and the task heads sentence embeddings never use.
IGNORED_PREFIXES = ("embeddings.position_ids", "embeddings.token_type_ids", "pooler.", "cls.", "lm_head.")


@dataclass(frozen=True)
class BertConfig:
    """The architecture numbers of a BERT or RoBERTa-family checkpoint, from its ``config.json``."""

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
            ModelFilesError: not a checkpoint this engine can run exactly (with the reason).
        """
        model_type = config.get("model_type")
        architectures = config.get("architectures") or []
        stem, prefix = MODEL_FAMILIES.get(str(model_type), ("", ""))
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


def check_weight_names(
    found: dict[str, tuple[int, ...]], config: BertConfig, head: dict[str, tuple[int, ...]] | None = None
) -> dict[str, str]:
    """Match a checkpoint's tensor names and shapes against what ``config`` needs.

    Args:
        found: Tensor name -> shape, as stored (with or without the ``bert.``/``roberta.`` prefix).
        config: The architecture.
        head: A task head's tensors, by their full stored names (``classifier.weight``, ...), required as well.

    Returns:
        Expected name -> stored name (a head's names map to themselves).

    Raises:
        ModelFilesError: listing every missing, unexpected and mis-shaped tensor.
    """
    head = head or {}
    expected = {**expected_shapes(config), **head}
    stored: dict[str, str] = {}
    unexpected = []
    for name in found:
        short = name if name in head else name.removeprefix(config.weight_prefix)
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


def load_weights(
    path: str | Path, config: BertConfig, head: dict[str, tuple[int, ...]] | None = None
) -> dict[str, torch.Tensor]:
    """Load a checkpoint from safetensors (never pickle), checking every name and shape first (``head``: a task
    head's tensors too, as :func:`check_weight_names` takes them).

    Returns:
        Expected (unprefixed) name -> float32 CPU tensor.

    Raises:
        ModelFilesError: unreadable file, or names/shapes that do not match ``config``.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
            stored = check_weight_names(shapes, config, head)
            return {name: handle.get_tensor(key).float() for name, key in stored.items()}
    except ModelFilesError:
        raise
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise ModelFilesError(f"cannot read weights {path}: {type(err).__name__}: {err}") from None
