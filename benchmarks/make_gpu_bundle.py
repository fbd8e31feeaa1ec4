"""Build the folder a lent GPU machine needs (it has no network and takes at most 64 MiB of working tree).

The official float32 weights (87 MB) do not travel, so this writes a copy of the bundled model with the weights
stored as float16 (45 MB) plus the tokenizer and config files, and the STS-B dev file beside it. On the GPU both
sentence-transformers and our engine load that copy and upcast it to float32 (float16 -> float32 is exact), so it
is their common reference there; fidelity to the official float32 weights is proven on the CPU by ``make test``.

Usage: ``python benchmarks/make_gpu_bundle.py [--out .gpu]`` (``.gpu/`` is git-ignored; name it in the device
tool's ``carry``), then ``bash benchmarks/gpu_check.sh`` on the GPU machine.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from minilm_npu.modelfiles import bundled_model_dir

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb-dev.tsv"


def build(out: Path) -> Path:
    """Write ``out/all-MiniLM-L6-v2-float16`` (float16 weights + every non-weight file) and ``out/stsb-dev.tsv``.

    Returns:
        The model directory.
    """
    source = bundled_model_dir()
    model = out / "all-MiniLM-L6-v2-float16"
    if model.exists():
        shutil.rmtree(model)
    shutil.copytree(
        source, model, ignore=shutil.ignore_patterns("model.safetensors", "*.md", ".gitattributes", "data_config.json")
    )
    weights = {
        name: tensor.half().contiguous() if tensor.is_floating_point() else tensor
        for name, tensor in load_file(source / "model.safetensors").items()
    }
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    if STSB.is_file():
        shutil.copy(STSB, out / "stsb-dev.tsv")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".gpu"), help="output folder (default: .gpu)")
    args = parser.parse_args()
    model = build(args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {model} ({size / 2**20:.1f} MiB in {args.out})")


if __name__ == "__main__":
    main()
