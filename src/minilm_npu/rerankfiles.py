"""A cross-encoder (reranker) on disk, read as sentence-transformers' ``CrossEncoder`` reads it.

A cross-encoder directory holds one transformers sequence-classification model (``config.json`` with
``architectures: ["BertForSequenceClassification"]`` or its XLM-RoBERTa / RoBERTa twin, ``tokenizer.json``,
``model.safetensors``), saved by sentence-transformers 6.x (``modules.json`` with a single Transformer module,
``config_sentence_transformers.json`` with ``model_type: "CrossEncoder"``) or earlier (the plain transformers
files). What it says:

* the labels (``id2label``; one label for a relevance score);
* the activation ``CrossEncoder.predict`` applies to the logits: ``activation_fn`` in
  ``config_sentence_transformers.json`` (6.x), else in ``config.json``'s ``sentence_transformers`` entry (4.x-5.x),
  else ``sbert_ce_default_activation_function`` (before 4.0), else Sigmoid for one label and none for more; a path
  outside ``torch.`` is not loaded (sentence-transformers' default is used instead, as it does without
  ``trust_remote_code``);
* the token limit, as for an embedding model (:func:`minilm_npu.modelconfig.read_max_seq_length`).

Of minilm_npu it imports :mod:`minilm_npu.modelfiles` and :mod:`minilm_npu.modelconfig`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelFilesError
from .modelconfig import read_json, read_optional
from .modelfiles import ModelFiles, _from_hub, looks_like_hub_id, read_transformer

log = logging.getLogger(__name__)

#: The sequence-classification architectures the packed engine runs, and the names of their head's tensors.
CLASSIFIER_ARCHITECTURES = (
    "BertForSequenceClassification",
    "XLMRobertaForSequenceClassification",
    "RobertaForSequenceClassification",
)
SIGMOID = "torch.nn.modules.activation.Sigmoid"
IDENTITY = "torch.nn.modules.linear.Identity"
HOW_TO_GET = (
    "A cross-encoder directory is what sentence-transformers' CrossEncoder(...).save(DIR) writes, or a downloaded "
    "cross-encoder (e.g. `huggingface-cli download cross-encoder/ms-marco-MiniLM-L6-v2 --local-dir DIR`)."
)


@dataclass(frozen=True)
class RerankerFiles:
    """A resolved cross-encoder and the settings read from its files.

    Attributes:
        files: The transformer's files and token limit (pooling fields unused).
        architecture: Its ``config.json`` architecture (one of :data:`CLASSIFIER_ARCHITECTURES`).
        labels: ``id2label`` in label order (one label: a relevance score).
        activation: The torch class path ``predict`` applies to the logits (:data:`IDENTITY` for none).
    """

    files: ModelFiles
    architecture: str
    labels: tuple[str, ...]
    activation: str

    @property
    def num_labels(self) -> int:
        """Scores per pair."""
        return len(self.labels)


def is_cross_encoder(directory: Path) -> bool:
    """Whether a model directory holds a cross-encoder: ``config_sentence_transformers.json`` says so (6.x), or
    a plain transformers sequence-classifier without sentence-transformers modules (earlier saves)."""
    st_config = read_optional(directory / "config_sentence_transformers.json")
    if "model_type" in st_config:
        return st_config["model_type"] == "CrossEncoder"
    if (directory / "modules.json").is_file() or not (directory / "config.json").is_file():
        return False
    architectures = read_json(directory / "config.json").get("architectures") or []
    return any(str(name).endswith("ForSequenceClassification") for name in architectures)


def model_directory(model_path: str | os.PathLike[str]) -> Path:
    """A local directory, or a hub id found in (or fetched into) the Hugging Face cache.

    Raises:
        ModelFilesError: neither.
    """
    text = os.fspath(model_path)
    if Path(text).expanduser().is_dir():
        return Path(text).expanduser().resolve()
    if looks_like_hub_id(text):
        return _from_hub(text)
    raise ModelFilesError(f"model directory {text} does not exist. {HOW_TO_GET}")


def _transformer_path(directory: Path) -> str:
    """The Transformer module's path from ``modules.json`` (6.x saves one module and nothing else)."""
    path = directory / "modules.json"
    if not path.is_file():
        return ""
    modules = read_json(path)
    types = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules] if isinstance(modules, list) else []
    if types != ["Transformer"]:
        raise ModelFilesError(
            f"{path}: modules {types or modules} are not supported for a cross-encoder; one sequence-classification "
            "Transformer module is (causal-LM rerankers with LogitScore and custom score modules are not)"
        )
    return str(modules[0].get("path", ""))


def _activation(directory: Path, config: dict[str, Any], num_labels: int) -> str:
    """The activation ``CrossEncoder.predict`` applies, found where sentence-transformers 6.x looks for it."""
    st_config = read_optional(directory / "config_sentence_transformers.json")
    candidates = (
        st_config.get("activation_fn"),
        (config.get("sentence_transformers") or {}).get("activation_fn"),
        config.get("sbert_ce_default_activation_function"),
    )
    path = next((str(c) for c in candidates if c), None)
    if path is not None and not path.startswith("torch."):
        log.warning("activation %r is not a torch class; using the default, as sentence-transformers does", path)
        path = None
    return path or (SIGMOID if num_labels == 1 else IDENTITY)


def read_reranker_dir(directory: str | Path, name: str | None = None) -> RerankerFiles:
    """Read a cross-encoder directory.

    Raises:
        ModelFilesError: missing files (listed), an architecture the packed engine has no head for, or modules
            other than one Transformer.
    """
    directory = Path(directory).expanduser().resolve()
    if not directory.is_dir():
        raise ModelFilesError(f"model directory {directory} does not exist. {HOW_TO_GET}")
    kind = read_optional(directory / "config_sentence_transformers.json").get("model_type", "CrossEncoder")
    if kind != "CrossEncoder":
        hint = " (load it with minilm_npu.MiniLMEncoder)" if kind == "SentenceTransformer" else ""
        raise ModelFilesError(f"{directory}: this is a {kind} model{hint}, not a CrossEncoder (reranker)")
    transformer_path = _transformer_path(directory)
    config, limits = read_transformer(directory, transformer_path, HOW_TO_GET)
    transformer_dir = directory / transformer_path
    architectures = config.get("architectures") or []
    architecture = next((a for a in architectures if a in CLASSIFIER_ARCHITECTURES), None)
    if architecture is None:
        raise ModelFilesError(
            f"{transformer_dir / 'config.json'}: architectures {architectures} have no sequence-classification head "
            f"this engine runs; cross-encoders on {', '.join(CLASSIFIER_ARCHITECTURES)} are supported"
        )
    id2label = config.get("id2label") or {}
    try:
        labels = tuple(str(id2label[key]) for key in sorted(id2label, key=int)) if id2label else ()
        labels = labels or tuple(f"LABEL_{i}" for i in range(int(config.get("num_labels", 2))))
    except (TypeError, ValueError):
        raise ModelFilesError(f"{transformer_dir / 'config.json'}: id2label {id2label!r} is malformed") from None
    files = ModelFiles(
        directory=directory,
        name=name or directory.name,
        config=config,
        **limits,
        pooling_modes=("cls",),
        prompts={},
        transformer_path=transformer_path,
    )
    return RerankerFiles(files, architecture, labels, _activation(directory, config, len(labels)))


def resolve_reranker(model_path: str | os.PathLike[str] | None) -> RerankerFiles:
    """A cross-encoder from a local directory or a hub id (no cross-encoder is bundled).

    Raises:
        ModelFilesError: with the reason and how to get one.
    """
    if model_path is None or os.fspath(model_path) == "":
        raise ModelFilesError(f"a reranker needs model_path (no cross-encoder is bundled). {HOW_TO_GET}")
    directory = model_directory(model_path)
    text = os.fspath(model_path)
    return read_reranker_dir(directory, name=text if looks_like_hub_id(text) and not Path(text).exists() else None)
