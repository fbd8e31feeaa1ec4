"""What a sentence-transformers model's own files say, read as sentence-transformers 2.x-6.x read them.

The modules after the transformer (``modules.json``: Pooling with its modes, Dense layers, Normalize), the token
limit (``sentence_bert_config.json`` or ``tokenizer_config.json``), prompts (``config_sentence_transformers.json``).
Used by :mod:`minilm_npu.modelfiles`; of minilm_npu it imports only :class:`~minilm_npu.errors.ModelFilesError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelFilesError

#: sentence-transformers' pooling modes, in the order it concatenates several (its ``Pooling`` module).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
#: ``modules.json`` module types we run, by class name (the package path changed across versions:
#: ``sentence_transformers.models.Pooling``, ``sentence_transformers.sentence_transformer.modules.pooling.Pooling``).
SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
#: ``config.json`` model types we run: BERT and the RoBERTa family (the same encoder, positions after the padding id).
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
#: Architectures whose position ids start after the padding id (fairseq's convention), not at 0.
PADDING_OFFSET_MODEL_TYPES = ("roberta", "xlm-roberta")
#: sentence-transformers' similarity functions (``config_sentence_transformers.json``; cosine when unset).
SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")
#: transformers' ``model_max_length`` when a tokenizer config sets none.
UNLIMITED = int(1e30)
#: Where sentence-transformers versions kept the Transformer module's settings (it tries them in this order).
ST_CONFIG_FILES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers ``Dense`` module after pooling: ``activation(x @ W.T + b)`` (+ x with a residual).

    Attributes:
        directory: The module's directory (its ``config.json`` and weights).
        in_features: Input width.
        out_features: Output width.
        bias: Whether the linear layer has a bias.
        activation: The activation's torch class path as saved (``torch.nn.modules.activation.Tanh``); a path
            outside ``torch.`` loads as Tanh, as sentence-transformers loads it without ``trust_remote_code``.
        residual: Whether the input is added back (projected when the widths differ).
    """

    directory: Path
    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "torch.nn.modules.activation.Tanh"
    residual: bool = False

    @property
    def weights_path(self) -> Path:
        """The module's safetensors weights (``linear.weight``, ``linear.bias``, ``residual.weight``)."""
        return self.directory / "model.safetensors"


def read_json(path: Path) -> Any:
    """Parsed JSON, or ModelFilesError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFilesError(f"cannot read {path}: {err}") from err


def read_optional(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or ``{}`` when there is no such file."""
    data = read_json(path) if path.is_file() else {}
    if not isinstance(data, dict):
        raise ModelFilesError(f"{path} is not a JSON object")
    return data


def pickle_hint(directory: Path) -> str:
    """What to say when a directory holds pickled weights instead of safetensors ("" when it does not)."""
    if (directory / "pytorch_model.bin").is_file():
        return " (pytorch_model.bin is present, but pickled weights are never loaded: convert it to safetensors)"
    return ""


def check_model_type(config: dict[str, Any], path: Path) -> None:
    """Raise ModelFilesError unless ``config.json`` describes an architecture we run (naming what it is)."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelFilesError(
            f"{path}: model_type {model_type!r} (architectures {config.get('architectures') or []}) is not "
            f"supported; sentence-transformers models on {', '.join(SUPPORTED_MODEL_TYPES)} are"
        )


def position_offset(config: dict[str, Any]) -> int:
    """Index of the first position embedding a sequence uses: ``pad_token_id + 1`` for the RoBERTa family, else 0."""
    if config.get("model_type") in PADDING_OFFSET_MODEL_TYPES:
        return int(config.get("pad_token_id", 1)) + 1
    return 0


def read_max_seq_length(transformer_dir: Path, st_config: dict[str, Any], config: dict[str, Any]) -> int:
    """The token limit, as sentence-transformers 2.x-6.x derive it.

    A ``model_max_length`` in the module's tokenizer arguments wins; then ``max_seq_length`` in
    ``sentence_bert_config.json`` (2.x-5.x save it there); else the tokenizer's ``model_max_length``
    (``tokenizer_config.json``, where 6.x saves it) capped at ``max_position_embeddings``. Whatever it is, it is
    capped at the positions the model has (``max_position_embeddings`` less the RoBERTa family's offset): a
    longer input would index past the position table.
    """
    positions = int(config.get("max_position_embeddings", 512))
    tokenizer_args = st_config.get("processor_kwargs") or st_config.get("tokenizer_args") or {}
    if tokenizer_args.get("model_max_length") is not None:
        limit = int(tokenizer_args["model_max_length"])
    elif st_config.get("max_seq_length") is not None:
        limit = int(st_config["max_seq_length"])
    else:
        tokenizer_config = read_optional(transformer_dir / "tokenizer_config.json")
        limit = min(int(tokenizer_config.get("model_max_length") or UNLIMITED), positions)
    return max(1, min(limit, positions - position_offset(config)))


def _module_class(module: dict[str, Any]) -> str:
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _read_pooling(path: Path) -> tuple[tuple[str, ...], bool]:
    """Modes and include_prompt of a Pooling module: ``pooling_mode`` (6.x) or ``pooling_mode_*`` flags (2.x-5.x)."""
    config = read_optional(path / "config.json")
    mode = config.get("pooling_mode")
    if mode is None:
        flags = {"cls_token": "cls", "max_tokens": "max", "mean_tokens": "mean"}
        flags |= {"mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "weightedmean_tokens": "weightedmean"}
        flags |= {"lasttoken": "lasttoken"}
        # In sentence-transformers' concatenation order (the flags' order above), whatever the file's order.
        modes = tuple(name for key, name in flags.items() if config.get(f"pooling_mode_{key}")) or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown:
        raise ModelFilesError(f"{path / 'config.json'}: pooling mode {unknown[0]!r} is not one of {POOLING_MODES}")
    return modes, bool(config.get("include_prompt", True))


def _read_dense(path: Path) -> DenseLayer:
    config = read_optional(path / "config.json")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") != "sentence_embedding":
            raise ModelFilesError(
                f"{path}: a Dense module on {config[key]!r} (per token) is not supported, only on the sentence "
                "embedding"
            )
    if not (path / "model.safetensors").is_file():
        hint = " (pytorch_model.bin is present, but pickled weights are never loaded: convert it to safetensors)"
        raise ModelFilesError(
            f"{path} has no model.safetensors" + (hint if (path / "pytorch_model.bin").is_file() else "")
        )
    try:
        return DenseLayer(
            directory=path,
            in_features=int(config["in_features"]),
            out_features=int(config["out_features"]),
            bias=bool(config.get("bias", True)),
            activation=str(config.get("activation_function") or "torch.nn.modules.activation.Tanh"),
            residual=bool(config.get("use_residual", False)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFilesError(f"{path / 'config.json'} is not a Dense module's config: {err}") from None


def read_modules(directory: Path) -> dict[str, Any]:
    """The sentence-transformers modules of a model, from ``modules.json`` and each module's files.

    Without ``modules.json`` (a plain transformers checkpoint), sentence-transformers' default: mean pooling.

    Returns:
        ``ModelFiles`` fields: transformer_path, pooling_modes, include_prompt, dense, normalize.

    Raises:
        ModelFilesError: a module other than Transformer, Pooling, Dense and a final Normalize (named), or
            modules in an order we do not run.
    """
    modules_path = directory / "modules.json"
    if not modules_path.is_file():
        return {}
    modules = read_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelFilesError(f"{modules_path} is not a list of modules")
    classes = [_module_class(m) for m in modules]
    for module, name in zip(modules, classes):
        if name not in SUPPORTED_MODULES:
            raise ModelFilesError(
                f"{modules_path}: module {module.get('type')!r} is not supported; embedding models made of "
                f"{', '.join(SUPPORTED_MODULES)} are (sparse, multi-vector and custom modules are not)"
            )
    body = classes[:-1] if classes[-1:] == ["Normalize"] else classes
    if body[:2] != ["Transformer", "Pooling"] or any(name != "Dense" for name in body[2:]):
        raise ModelFilesError(
            f"{modules_path}: modules {classes} are not supported; the order must be Transformer, Pooling, "
            "Dense modules (any number), then an optional Normalize"
        )
    modes, include_prompt = _read_pooling(directory / modules[1].get("path", ""))
    return {
        "transformer_path": str(modules[0].get("path", "")),
        "pooling_modes": modes,
        "include_prompt": include_prompt,
        "dense": tuple(_read_dense(directory / m.get("path", "")) for m in modules[2 : len(body)]),
        "normalize": len(body) < len(classes),
    }


def read_model_settings(directory: Path) -> dict[str, Any]:
    """``config_sentence_transformers.json``: prompts, default prompt name and similarity function (as
    ``ModelFiles`` fields).

    Raises:
        ModelFilesError: a model of another kind (CrossEncoder, SparseEncoder, ...), a default prompt name that
            names no prompt, or an unknown similarity function.
    """
    path = directory / "config_sentence_transformers.json"
    config = read_optional(path)
    kind = config.get("model_type", "SentenceTransformer")
    if kind != "SentenceTransformer":
        hint = (
            " (load it with minilm_npu.Reranker; `minilm-npu serve` and `minilm-npu accuracy` take it)"
            if kind == "CrossEncoder"
            else ""
        )
        raise ModelFilesError(
            f"{path}: this is a {kind} model{hint}; only SentenceTransformer (embedding) models run here"
        )
    prompts = config.get("prompts")
    prompts = {"query": "", "document": "", **(prompts if isinstance(prompts, dict) else {})}
    default = config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ModelFilesError(f"{path}: default_prompt_name {default!r} is not one of its prompts {sorted(prompts)}")
    similarity = config.get("similarity_fn_name") or "cosine"
    if similarity not in SIMILARITY_FUNCTIONS:
        raise ModelFilesError(f"{path}: similarity_fn_name {similarity!r} is not one of {SIMILARITY_FUNCTIONS}")
    prompts = {k: v or "" for k, v in prompts.items()}
    return {"prompts": prompts, "default_prompt_name": default, "similarity_fn_name": similarity}
