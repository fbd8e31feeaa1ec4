#!/usr/bin/env python3
"""The reference port's entry point, kept working: ``python inference.py --model_path DIR --text "Hello world"``.

It prints the embedding dimension (384) as the port report's basic check expects, and takes the same flags as
``minilm-npu encode`` (``--batch_file texts.txt --batch_size 32``, ``--device npu``, ``--output FILE``, ...).
``from inference import MiniLMEncoder`` works from the repository root, installed or not.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from minilm_npu import MiniLMEncoder
except ImportError:  # a plain checkout: use the package from src/
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from minilm_npu import MiniLMEncoder

__all__ = ["MiniLMEncoder", "main"]


def main(argv: list[str] | None = None) -> int:
    """``minilm-npu encode`` under the reference port's name."""
    from minilm_npu.cli.main import main as cli_main

    return cli_main(["encode", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
