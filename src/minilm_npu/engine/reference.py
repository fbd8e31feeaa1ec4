"""Reference backend: exactly the port report's method, on transformers' ``AutoModel``.

Tokenization happens on the CPU (the encoder's pre stage); here the ids are padded into ``input_ids`` /
``attention_mask`` tensors on the CPU, moved with ``.to(device)``, run through the stock BERT, and mean-pooled over
the attention mask. This is what sentence-transformers itself does, so it is the yardstick the fast engine is
checked against, on any device.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..modelfiles import ModelFiles
from .backend import TORCH_DTYPES, Backend


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
    """transformers ``AutoModel`` on one device, padded batches, masked mean (or CLS) pooling.

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
        model = AutoModel.from_pretrained(str(model_files.directory), use_safetensors=True)
        self.model = model.to(device=device, dtype=TORCH_DTYPES[dtype]).eval()

    def _forward(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask = pad_batch(batch)
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
    def embed(self, batch: list[list[int]]) -> torch.Tensor:
        """Pooled, not normalised, float32 ``[len(batch), hidden]`` on ``self.device``."""
        hidden, attention_mask = self._forward(batch)
        if self.pooling == "cls":
            return hidden[:, 0].float()
        # Pool in float32 whatever the model's dtype: summing up to 256 bf16 vectors loses digits for nothing.
        hidden = hidden.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
