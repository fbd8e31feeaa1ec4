"""The packed engine with a sequence-classification head: a cross-encoder's logits for text pairs.

The encoder is the packed engine's own (:class:`~minilm_npu.engine.packed.PackedBackend`, every device and dtype it
runs); the head is the only new part. BERT's (``bert.pooler.dense`` then ``classifier``) and the RoBERTa family's
(``classifier.dense`` then ``classifier.out_proj``) compute the same thing on the first token's last hidden state:
``out(tanh(dense(h_cls)))``, in float32. A pair's second text has token type 1 on BERT
(:class:`~minilm_npu.tokenization.PairIds` says where it starts); the RoBERTa family has one token type.

Batches run eagerly on every device: the static-shape device graphs take no token types.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..modelfiles import ModelFiles
from ..rerankfiles import RerankerFiles
from .checkpoint import BertConfig, load_weights
from .packed import PackedBackend
from .packing import PackedBatch
from .policy import AttentionPlan

#: Per architecture: the stored names of the head's two linear layers (the tanh layer, the label layer).
HEAD_LAYERS = {
    "BertForSequenceClassification": ("bert.pooler.dense", "classifier"),
    "XLMRobertaForSequenceClassification": ("classifier.dense", "classifier.out_proj"),
    "RobertaForSequenceClassification": ("classifier.dense", "classifier.out_proj"),
}


def head_shapes(architecture: str, config: BertConfig, num_labels: int) -> dict[str, tuple[int, ...]]:
    """The head's tensors, by their stored names, and their shapes."""
    dense, out = HEAD_LAYERS[architecture]
    h = config.hidden_size
    return {
        f"{dense}.weight": (h, h),
        f"{dense}.bias": (h,),
        f"{out}.weight": (num_labels, h),
        f"{out}.bias": (num_labels,),
    }


class ClassificationHead:
    """``out(tanh(dense(x)))`` in float32: BERT's pooler and classifier, or the RoBERTa family's classification head
    (dropout, inactive at inference, aside).

    Args:
        weights: The head's tensors by stored name (:func:`head_shapes`).
        architecture: Which names they have.
        device: Where the hidden states are.
    """

    def __init__(self, weights: dict[str, torch.Tensor], architecture: str, device: torch.device):
        dense, out = HEAD_LAYERS[architecture]

        def get(name: str) -> torch.Tensor:
            return weights[name].to(device=device, dtype=torch.float32).contiguous()

        self.dense = (get(f"{dense}.weight"), get(f"{dense}.bias"))
        self.out = (get(f"{out}.weight"), get(f"{out}.bias"))

    def __call__(self, first_token: torch.Tensor) -> torch.Tensor:
        """Logits ``[sequences, num_labels]`` from the first token's hidden states ``[sequences, hidden]``."""
        return F.linear(torch.tanh(F.linear(first_token.float(), *self.dense)), *self.out)


class PackedReranker(PackedBackend):
    """The packed engine and a sequence-classification head on one device: logits per pair.

    ``embed`` takes token-id lists (:class:`~minilm_npu.tokenization.PairIds` for pairs; a plain list is all token
    type 0) and returns float32 ``[len(batch), num_labels]`` logits, before the model's activation.

    Args:
        reranker_files: The resolved cross-encoder.
        device, dtype, attention: As :class:`~minilm_npu.engine.packed.PackedBackend`.

    Raises:
        InputError: a dtype this device cannot run.
        ModelFilesError: weights that do not match config.json (the head's names and shapes included).
    """

    #: Pairs carry token types and the logits come from the classification head: neither is in the one-sentence
    #: graph, so every call runs on the packed engine.
    one_sentence_graph = False

    def __init__(
        self,
        reranker_files: RerankerFiles,
        device: torch.device,
        dtype: str,
        attention: AttentionPlan | None = None,
    ):
        self.reranker_files = reranker_files
        self._head_weights: dict[str, torch.Tensor] = {}
        super().__init__(reranker_files.files, device, dtype, attention)
        self.graphs = None  # pairs carry token types, which the static-shape graphs do not take
        self.classifier = ClassificationHead(self._head_weights, reranker_files.architecture, device)
        self._head_weights = {}

    def _load_weights(self, model_files: ModelFiles) -> dict[str, torch.Tensor]:
        files = self.reranker_files
        head = head_shapes(files.architecture, self.config, files.num_labels)
        weights = load_weights(model_files.weights_path, self.config, head)
        self._head_weights = {name: weights.pop(name) for name in head}
        return weights

    def _token_types(self, batch: Sequence[Sequence[int]], packed: PackedBatch) -> torch.Tensor | None:
        """Each packed token's type: 1 from a pair's second text on, where the model has token types."""
        if self.model.type_delta is None:
            return None
        seconds = [getattr(ids, "second", len(ids)) for ids in batch]
        if all(second >= len(ids) for second, ids in zip(seconds, batch)):
            return None
        # One more entry for the padding rows of a token gear (sequence ``count``): type 0, past any slot.
        second = torch.tensor([*seconds, 1 << 30], dtype=torch.long).to(self.device)
        rows = packed.rows
        return (rows.slots >= second.index_select(0, rows.sequence)).long()

    def _embed(self, batch: list[list[int]], prompt_length: int = 0) -> torch.Tensor:
        packed = self._pack(batch)
        hidden = self.model.forward(packed, self._token_types(batch, packed))
        return self.classifier(self.head(hidden, packed.rows))

    @torch.inference_mode()
    def token_embeddings(self, batch: list[list[int]]) -> list[torch.Tensor]:
        """Last-layer hidden states per pair (token types applied), float32 ``[len(ids), hidden]``."""
        if not batch:
            return []
        packed = self._pack(batch)
        hidden = self.model.forward(packed, self._token_types(batch, packed))[: sum(packed.lengths)]  # no gear padding
        return list(hidden.float().split(packed.lengths))
