"""Corpus embedding at scale: streaming readers, a crash-safe resumable job, a Ray engine, and exact search.

Everything here uses an encoder only through :class:`minilm_npu.contract.Encoder`, so a fake encoder can stand in
for tests.
"""

from .inputs import expand_inputs
from .job import DEFAULT_SHARD_ROWS, EmbedSettings, EmbedSummary, LocalEngine, embed_corpus
from .readers import CorpusReader, Record
from .search import Hit, search_corpus, search_vectors

__all__ = [
    "DEFAULT_SHARD_ROWS",
    "CorpusReader",
    "EmbedSettings",
    "EmbedSummary",
    "Hit",
    "LocalEngine",
    "Record",
    "embed_corpus",
    "expand_inputs",
    "search_corpus",
    "search_vectors",
]
