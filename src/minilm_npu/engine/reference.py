"""Reference backend: exactly the port report's method, on transformers' ``AutoModel``.

Tokenization happens on the CPU (the encoder's pre stage); here the ids are padded into ``input_ids`` /
``attention_mask`` tensors on the CPU (with the model's own padding id), moved with ``.to(device)``, run through the
stock transformers model, and pooled over the attention mask by the model's own modules (:mod:`.head`). This is what
sentence-transformers itself does, so it is the yardstick the fast engine is checked against, on any device.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..modelfiles import ModelFiles
from .backend import TORCH_DTYPES, Backend
from .head import RowLayout, SentenceHead


def pad_batch(batch: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token ids into ``(input_ids, attention_mask)`` int64 tensors on the CPU."""
    longest = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


class TransformersBackend(Backend):
    """transformers ``AutoModel`` on one device, padded batches, the model's pooling and Dense modules.

    Args:
        model_files: The resolved model.
        device: Where the forward pass runs.
        dtype: ``float32`` (exact), ``bfloat16`` or ``float16``; int8 is the packed engine's.
    """

    name = "transformers"

    def __init__(self, model_files: ModelFiles, device: torch.device, dtype: str):
        if dtype not in TORCH_DTYPES:
            raise InputError(
                f"the transformers backend runs {', '.join(TORCH_DTYPES)}, not {dtype!r}; int8 needs the packed backend"
            )
        try:
            from transformers import AutoModel
            from transformers.utils import logging as transformers_logging
        except ImportError as err:
            raise InputError("the transformers backend needs `pip install transformers`") from err
        self.device, self.dtype, self.pooling = device, dtype, model_files.pooling
        transformers_logging.disable_progress_bar()  # its per-weight loading bar is noise in a CLI
        model = AutoModel.from_pretrained(str(model_files.transformer_dir), use_safetensors=True)
        self.model = model.to(device=device, dtype=TORCH_DTYPES[dtype]).eval()
        self.head = SentenceHead(model_files, device)
        # The RoBERTa family numbers positions from the padding id on: padding with it keeps every position valid.
        self.pad_id = int(model_files.config.get("pad_token_id") or 0)

    def _forward(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask = pad_batch(batch, self.pad_id)
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        return hidden, attention_mask

    @torch.inference_mode()
    def token_embeddings(self, batch: list[list[int]]) -> list[torch.Tensor]:
        """Last-layer hidden states before pooling, float32 ``[len(ids), hidden]`` per sequence."""
        hidden = self._forward(batch)[0].float()
        return [hidden[row, : len(ids)] for row, ids in enumerate(batch)]

    @torch.inference_mode()
    def embed(self, batch: list[list[int]], prompt_length: int = 0) -> torch.Tensor:
        """Sentence embeddings before the model's final Normalize, float32 ``[len(batch), dimension]`` on
        ``self.device``; pooling runs in float32 whatever the model's dtype (summing hundreds of bf16 vectors loses
        digits for nothing)."""
        hidden, attention_mask = self._forward(batch)
        layout = RowLayout.padded(attention_mask.sum(dim=1), attention_mask.shape[1])
        return self.head(hidden.reshape(-1, hidden.shape[-1]), layout, prompt_length)
