"""The one validation step at the edge: raw request input in, checked token ids out (or a 4xx ``ApiError``).

It tokenizes as well, because several limits (``truncate: false``, the token-id checks, prompts) are about
tokens; callers run it off the event loop when the input is large (``Batcher.preprocess``). Everything after it
sees only valid ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..contract import Encoder
from ..errors import InputError
from ..tokenization import TokenIdError, check_token_ids
from .errors import ApiError


@dataclass(frozen=True)
class Edge:
    """What validation needs of one app, worked out once: the encoder, the request limit, the model's prompts and
    the special tokens that frame every tokenized text (kept when token ids are truncated).

    Args:
        encoder: The encoder (``tokenize``, ``max_seq_length``, ``dimension``, ``tokenizer.vocab_size``).
        max_client_batch_size: Most inputs per request.
    """

    encoder: Encoder
    max_client_batch_size: int

    def with_batch_limit(self, max_client_batch_size: int) -> Edge:
        """The same edge with another request limit (``/similarity`` checks its sentences itself, then embeds
        them with the source sentence: one more)."""
        return Edge(self.encoder, max_client_batch_size)

    @cached_property
    def frame(self) -> tuple[int, int]:
        """The ids of the tokens the tokenizer puts first and last (``[CLS]``, ``[SEP]``)."""
        empty = self.encoder.tokenize([""])[0]
        return empty[0], empty[-1]


@dataclass(frozen=True)
class PreparedInput:
    """Validated input, ready for the batcher.

    Attributes:
        ids: Token ids per input (``[CLS] ... [SEP]`` for texts), at most ``max_seq_length`` each.
        prompt_tokens: Total real tokens, special tokens included (OpenAI ``usage``).
    """

    ids: list[list[int]]
    prompt_tokens: int


def _as_batch(inputs: Any, param: str) -> tuple[list[str] | None, list[list[int]] | None]:
    """Sort the four accepted shapes into (texts, None) or (None, token id lists)."""
    if isinstance(inputs, str):
        return [inputs], None
    if all(isinstance(item, str) for item in inputs):
        return list(inputs), None
    if all(isinstance(item, int) and not isinstance(item, bool) for item in inputs):
        return None, [list(inputs)]
    if all(isinstance(item, list) for item in inputs):
        return None, [list(item) for item in inputs]
    raise ApiError(
        422,
        f"{param} must be a string, a list of strings, a list of token ids or a list of lists of token ids",
        param=param,
    )


def input_work(inputs: Any, limit: int) -> int:
    """A size estimate of a request's input (characters of text, or token ids), counted only until it passes
    ``limit``: enough to tell small requests (tokenized on the event loop) from the rest, at a bounded cost."""
    if isinstance(inputs, str):
        return len(inputs)
    total = 0
    for item in inputs:
        total += len(item) if isinstance(item, (str, list)) else 1
        if total > limit:
            break
    return total


def resolve_prompt(encoder: Encoder, prompt_name: str | None) -> str:
    """The text of the model's prompt ``prompt_name`` ("" for None); 400 naming the model's prompts otherwise."""
    if prompt_name is None:
        return ""
    prompts = encoder.prompts
    if prompt_name not in prompts:
        raise ApiError(
            400,
            f"prompt_name {prompt_name!r} is not one of this model's prompts ({', '.join(sorted(prompts)) or 'none'})",
            param="prompt_name",
        )
    return prompts[prompt_name]


def direction_of(value: str) -> str:
    """``right``/``left`` from TEI's spellings (``Right``/``Left`` too)."""
    return value.lower()


def cut_ids(ids: list[int], limit: int, direction: str, frame: tuple[int, int]) -> list[int]:
    """``ids`` cut to ``limit``: the start kept (``right``) or the end (``left``). Ids framed by the tokenizer's
    first and last special tokens keep them, as a text truncated by the tokenizer does."""
    if len(ids) <= limit:
        return ids
    if len(ids) >= 2 and (ids[0], ids[-1]) == frame and limit >= 2:
        inner = ids[1:-1]
        keep = limit - 2
        inner = (inner[len(inner) - keep :] if keep else []) if direction == "left" else inner[:keep]
        return [frame[0], *inner, frame[1]]
    return ids[len(ids) - limit :] if direction == "left" else ids[:limit]


def prepare_inputs(
    inputs: Any,
    edge: Edge,
    *,
    truncate: bool | None = True,
    truncation_direction: str = "right",
    prompt_name: str | None = None,
    dimensions: int | None = None,
    param: str = "input",
    names: Sequence[str] | None = None,
    check_length: bool = True,
) -> PreparedInput:
    """Validate one request's input and turn it into token ids.

    Args:
        inputs: A string, a list of strings, a list of token ids or a list of lists of token ids (as the
            request models admit them). An empty string is valid and embeds as ``[CLS] [SEP]``, as
            sentence-transformers does.
        edge: The app's :class:`Edge`.
        truncate: Cut inputs over ``max_seq_length`` tokens (None: the default, True); with False such an input
            is an error.
        truncation_direction: ``right`` (keep the start) or ``left`` (keep the end).
        prompt_name: One of the model's prompts, put before every text.
        dimensions: Requested output dimensions, checked against the model's.
        param: The request field name used in error messages (``input`` or ``inputs``).
        names: What to call each input in messages (default ``param[i]``, or ``param`` for a lone string).
        check_length: With False (``/tokenize``), texts are neither truncated nor checked against the limit.

    Returns:
        The checked token ids and their total count.

    Raises:
        ApiError: 400 with a one-line message naming the field and the limit.
    """
    encoder = edge.encoder
    limit = encoder.max_seq_length
    truncate = truncate is not False
    direction = direction_of(truncation_direction)
    if dimensions is not None and not 1 <= dimensions <= encoder.dimension:
        raise ApiError(
            400, f"dimensions must be between 1 and {encoder.dimension}, not {dimensions}", param="dimensions"
        )
    prompt = resolve_prompt(encoder, prompt_name)
    if not isinstance(inputs, str) and len(inputs) == 0:
        raise ApiError(400, f"{param} must not be an empty list", kind="empty", param=param)
    texts, id_lists = _as_batch(inputs, param)
    count = len(texts if texts is not None else id_lists)
    if count > edge.max_client_batch_size:
        raise ApiError(
            400,
            f"{param} has {count} items; this server takes at most {edge.max_client_batch_size} "
            f"per request (--max-client-batch-size)",
            param=param,
        )

    def name(index: int) -> str:
        if names is not None:
            return names[index]
        return param if isinstance(inputs, str) else f"{param}[{index}]"

    if texts is not None:
        if prompt:
            texts = [prompt + text for text in texts]
        try:
            ids = encoder.tokenize(texts, truncate=truncate and check_length, truncation_direction=direction)
        except InputError as err:  # e.g. a lone surrogate, which JSON's "\ud800" escapes can carry
            index, reason = getattr(err, "index", None), getattr(err, "reason", None)
            if index is None or reason is None:
                raise ApiError(400, str(err), param=param) from err
            raise ApiError(400, f"{name(index)} {reason}", param=param) from err
        if check_length and not truncate:
            for index, seq in enumerate(ids):
                if len(seq) > limit:
                    raise ApiError(
                        400,
                        f"{name(index)} has {len(seq)} tokens; the model takes at most {limit} "
                        f"(send truncate: true to cut it)",
                        param=param,
                    )
    else:
        if prompt:
            raise ApiError(
                400,
                f"prompt_name {prompt_name!r} puts text before the input, which token ids cannot take: send text",
                param="prompt_name",
            )
        if truncate:
            frame = edge.frame
            id_lists = [cut_ids(ids, limit, direction, frame) for ids in id_lists]
        try:
            ids = check_token_ids(id_lists, encoder.tokenizer.vocab_size, limit, name=param)
        except TokenIdError as err:
            raise ApiError(400, str(err), kind="empty" if err.empty else "validation", param=param) from None
    return PreparedInput(ids=ids, prompt_tokens=sum(len(seq) for seq in ids))
