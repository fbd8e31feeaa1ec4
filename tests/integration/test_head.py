"""The head (engine/head.py) against sentence-transformers' own Pooling module, mode by mode, on random hidden states:
padded and packed layouts, prompts left out of pooling, sequences no longer than the prompt.

float32 within 1e-6: the same sums in another order (a weighted matmul against a masked sum then a division).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from minilm_npu.engine.head import RowLayout, SentenceHead

MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LENGTHS = [7, 1, 3, 12, 2, 5]  # with a prompt of 3 tokens: some sequences are all prompt, one is shorter


def st_pooling(mode, hidden_padded, lengths, prompt_length):
    """sentence-transformers' Pooling over a right-padded batch, as its encode runs it."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    pooling = Pooling(hidden_padded.shape[-1], pooling_mode=mode, include_prompt=prompt_length == 0)
    mask = (torch.arange(hidden_padded.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
    features = {"token_embeddings": hidden_padded, "attention_mask": mask}
    if prompt_length:
        features["prompt_length"] = prompt_length
    return pooling(features)["sentence_embedding"]


@pytest.mark.parametrize("prompt_length", [0, 3])
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_equals_sentence_transformers(mode, prompt_length):
    generator = torch.Generator().manual_seed(1)
    width = max(LENGTHS)
    padded = torch.randn(len(LENGTHS), width, 16, generator=generator)
    expected = st_pooling(mode, padded, LENGTHS, prompt_length)
    # Padded layout: every slot of every row, padding included (the static-shape graphs' and transformers' layout).
    layout = RowLayout.padded(torch.tensor(LENGTHS), width)
    got = SentenceHead.pool(padded.reshape(-1, 16), layout, mode, prompt_length)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    # Packed layout: real tokens end to end (the packed engine's), one sequence alone included.
    packed = torch.cat([padded[i, :n] for i, n in enumerate(LENGTHS)])
    got = SentenceHead.pool(packed, RowLayout.packed(LENGTHS), mode, prompt_length)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    alone = SentenceHead.pool(padded[3, :12], RowLayout.packed([12]), mode, prompt_length)
    torch.testing.assert_close(alone, expected[3:4], atol=1e-6, rtol=1e-6)


def test_modes_concatenate_and_prompt_only_matters_without_include_prompt():
    files = SimpleNamespace(pooling_modes=("cls", "mean"), include_prompt=True, dense=(), dimension=32, hidden_size=16)
    head = SentenceHead(files, torch.device("cpu"))
    hidden = torch.randn(sum(LENGTHS), 16)
    layout = RowLayout.packed(LENGTHS)
    both = head(hidden, layout, prompt_length=3)  # include_prompt=True: the prompt is pooled like the text
    assert both.shape == (len(LENGTHS), 32)
    torch.testing.assert_close(both[:, :16], SentenceHead.pool(hidden, layout, "cls"))
    torch.testing.assert_close(both[:, 16:], SentenceHead.pool(hidden, layout, "mean"))
