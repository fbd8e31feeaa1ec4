"""minilm-npu: exact, fast all-MiniLM-L6-v2 sentence embeddings on Ascend NPUs, CUDA GPUs and CPUs."""

from .encoder import MiniLMEncoder

__all__ = ["MiniLMEncoder", "__version__"]
__version__ = "0.1.0"
