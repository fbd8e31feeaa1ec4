"""The accuracy protocol's CPU float32 reference side: sentence-transformers itself, or our transformers backend.

For a model other than the bundled all-MiniLM-L6-v2 the reference is ``SentenceTransformer(DIR, device="cpu")`` in
float32, encoding with the model's own defaults (its Normalize module or none, its default prompt, its
``max_seq_length``) — what a user of that model gets from sentence-transformers. For the bundled model (or a copy
of it: the same ``config.json`` and ``tokenizer.json``) the reference stays the official files through the
transformers backend, so a damaged copy under test shows up as a FAIL rather than as agreement with itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..contract import Encoder, ModelInfo
from ..errors import InputError
from .settings import REFERENCE_BACKEND, SENTENCE_TRANSFORMERS, AccuracySettings, build_encoder

#: Weight files a sentence-transformers directory may hold, in the order they are looked for (hashed for reports).
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: The files that make a directory a copy of the bundled model, whatever its weights.
_BUNDLED_DESCRIPTION = ("config.json", "tokenizer.json")


class SentenceTransformersReference:
    """``sentence_transformers.SentenceTransformer`` on the CPU in float32, as the part of the
    :class:`~minilm_npu.contract.Encoder` contract the accuracy protocol uses (``encode``, ``tokenize``,
    ``max_seq_length``, ``dimension``, ``model_name``, ``model_info``).

    Args:
        model_path: A local sentence-transformers directory or a hub id in the Hugging Face cache.

    Attributes:
        backend: ``"sentence-transformers"`` (the report's reference backend).
        version: The installed sentence-transformers version.

    Raises:
        InputError: sentence-transformers is not installed.
        ModelFilesError: no such directory (or cached hub id).
    """

    backend = SENTENCE_TRANSFORMERS

    def __init__(self, model_path: str | Path) -> None:
        try:
            import sentence_transformers
        except ImportError:
            raise InputError(
                "the reference side is sentence-transformers (--reference sentence-transformers): "
                "pip install sentence-transformers, or pass --reference transformers"
            ) from None
        from ..rerankfiles import model_directory

        self._directory = model_directory(model_path)
        # .float(): a model saved in half precision would otherwise load as saved; the reference is float32.
        self._model = sentence_transformers.SentenceTransformer(str(self._directory), device="cpu").float()
        self.version: str = sentence_transformers.__version__

    @property
    def dimension(self) -> int:
        """Vector width."""
        return int(self._model.get_sentence_embedding_dimension())

    @property
    def max_seq_length(self) -> int:
        """sentence-transformers' limit for this model, special tokens included."""
        return int(self._model.max_seq_length)

    @property
    def model_name(self) -> str:
        """The directory's name."""
        return self._directory.name

    @property
    def model_info(self) -> ModelInfo:
        """The model's name, directory and weight file."""
        found = [self._directory / name for name in _WEIGHT_FILES if (self._directory / name).is_file()]
        found = found or sorted(self._directory.glob(f"**/{_WEIGHT_FILES[0]}"))
        if not found:
            raise InputError(f"reference model directory {self._directory} holds no {' or '.join(_WEIGHT_FILES)}")
        return ModelInfo(name=self.model_name, directory=str(self._directory), weights_path=str(found[0]))

    def tokenize(
        self, texts: Sequence[str], truncate: bool = True, truncation_direction: str = "right"
    ) -> list[list[int]]:
        """Token ids per text from the model's own tokenizer, cut at ``max_seq_length`` unless ``truncate=False``
        (the report counts how many texts sentence-transformers truncates)."""
        if truncation_direction != "right":
            raise InputError("the sentence-transformers reference truncates on the right only")
        ids = self._model.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
        return [list(row[: self.max_seq_length] if truncate else row) for row in ids]

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int | None = None,
        normalize_embeddings: bool | None = None,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """``SentenceTransformer.encode`` with the model's own defaults, as float32 numpy.

        Raises:
            InputError: ``normalize_embeddings`` given: the reference encodes only as the model's modules say.
        """
        if normalize_embeddings is not None:
            raise InputError("the sentence-transformers reference encodes with the model's own normalisation only")
        vectors = self._model.encode(
            sentences, convert_to_numpy=True, batch_size=batch_size or 32, show_progress_bar=show_progress_bar
        )
        return np.asarray(vectors, dtype=np.float32)


def reference_kind(settings: AccuracySettings) -> str:
    """Which reference runs: ``settings.reference`` when given, else transformers for the bundled model (or a copy
    of it) under test, against the official files, and sentence-transformers for any other model."""
    if settings.reference is not None:
        return settings.reference
    return REFERENCE_BACKEND if _is_bundled(settings.target.model_path) else SENTENCE_TRANSFORMERS


def build_reference(settings: AccuracySettings) -> Encoder | SentenceTransformersReference:
    """The CPU float32 reference of :func:`reference_kind`: sentence-transformers on ``reference_model_path``, else
    on the model under test's directory (else the bundled one); the transformers backend on
    ``reference_model_path`` (None: the bundled official files)."""
    if reference_kind(settings) == REFERENCE_BACKEND:
        return build_encoder(settings.reference_model_path, "cpu", "float32", REFERENCE_BACKEND)
    path = settings.reference_model_path or settings.target.model_path
    if path is None:
        from ..modelfiles import bundled_model_dir

        path = str(bundled_model_dir())
    return SentenceTransformersReference(path)


def _is_bundled(model_path: str | None) -> bool:
    """Whether ``--model-path`` is absent or names the bundled model: its directory, or a copy of it (the same
    ``config.json`` and ``tokenizer.json``, whatever its weights), which is checked against the official weights so
    that a damaged copy fails."""
    if model_path is None or str(model_path) == "":
        return True
    from ..errors import ModelFilesError
    from ..modelfiles import bundled_model_dir

    directory = Path(model_path).expanduser()
    try:
        bundled = bundled_model_dir()
    except ModelFilesError:
        return False
    try:
        return directory.resolve() == bundled.resolve() or all(
            (directory / name).read_bytes() == (bundled / name).read_bytes() for name in _BUNDLED_DESCRIPTION
        )
    except OSError:  # not a local directory, or one without these files: not a copy of the bundled model
        return False
