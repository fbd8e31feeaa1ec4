"""Adapters for RAG frameworks, each an optional extra imported only when asked for.

* :mod:`minilm_npu.integrations.langchain`: ``MiniLMEmbeddings``, a ``langchain_core`` ``Embeddings``
  (``pip install 'minilm-npu[langchain]'``);
* :mod:`minilm_npu.integrations.llamaindex`: ``MiniLMEmbedding``, a LlamaIndex ``BaseEmbedding``
  (``pip install 'minilm-npu[llamaindex]'``).

Both are thin: they embed through one :class:`~minilm_npu.encoder.MiniLMEncoder` in this process, or through a
running ``minilm-npu serve`` by URL (its OpenAI-compatible ``/v1/embeddings``), see :mod:`.source`.
"""
