"""Cross-encoder (reranker) speed: our Reranker against sentence-transformers' CrossEncoder on the same directory.

Both run on the CPU in the same process, interleaved round by round (so machine load hits both alike), on two
workloads: one query against N documents (a search result page to rerank) and the STS-B dev pairs (when the file
is there). Reported: pairs per second (best round), the ratio ours / CrossEncoder, and the largest score difference
against CrossEncoder (float32 must stay within 1e-5). The table names the CPU and its ISA flags and the load
average at the start; only same-run ratios mean anything on a shared machine.

    python benchmarks/bench_rerank.py --model-path DIR [--documents 100] [--rounds 3] [--dtypes float32,int8]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from minilm_npu import Reranker
from minilm_npu.engine.cpu_kernels import isa_summary
from minilm_npu.samples import MIXED_24
from minilm_npu.verify.accuracy import load_sts
from minilm_npu.verify.environment import cpu_model

STSB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsb-dev.tsv"


def workloads(documents: int, sts_limit: int) -> dict[str, list[list[str]]]:
    """Name -> pairs."""
    texts = [MIXED_24[i % len(MIXED_24)] for i in range(documents)]
    out = {f"1 query x {documents} documents": [[MIXED_24[5], text] for text in texts]}
    if STSB.is_file():
        first, second, _ = load_sts(STSB, sts_limit)
        out[f"STS-B dev {len(first)} pairs"] = [[a, b] for a, b in zip(first, second)]
    return out


def best_rate(run, pairs: list[list[str]]) -> float:
    start = time.perf_counter()
    run(pairs)
    return len(pairs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="a CrossEncoder directory")
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--sts-limit", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtypes", default="float32,int8")
    args = parser.parse_args()
    from sentence_transformers import CrossEncoder

    load = os.getloadavg()[0]
    identity = torch.nn.Identity()
    reference = CrossEncoder(args.model_path, device="cpu")
    ours = {dtype: Reranker(model_path=args.model_path, device="cpu", dtype=dtype) for dtype in args.dtypes.split(",")}
    engines = {"sentence-transformers fp32": lambda p: reference.predict(p, batch_size=args.batch_size)}
    engines |= {f"ours {d}": (lambda p, r=r: r.predict(p, batch_size=args.batch_size)) for d, r in ours.items()}
    config = next(iter(ours.values())).model_files.config
    print(
        f"{args.model_path}: {config['model_type']}, {config['num_hidden_layers']} layers, hidden "
        f"{config['hidden_size']}; {cpu_model()} ({isa_summary()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load:.1f} at the start"
    )
    header = "| workload | " + " | ".join(engines) + " | ours fp32 / sentence-transformers |"
    print(header + "\n|---|" + "---:|" * (len(engines) + 1))
    for name, pairs in workloads(args.documents, args.sts_limit).items():
        for run in engines.values():  # warm-up
            run(pairs[:8])
        rates = {engine: 0.0 for engine in engines}
        for _ in range(args.rounds):
            for engine, run in engines.items():
                rates[engine] = max(rates[engine], best_rate(run, pairs))
        ratio = rates.get("ours float32", 0.0) / rates["sentence-transformers fp32"]
        print(f"| {name} | " + " | ".join(f"{r:,.0f}" for r in rates.values()) + f" | {ratio:.2f}x |")
        expected = reference.predict(pairs, activation_fn=identity, batch_size=args.batch_size)
        for dtype, reranker in ours.items():
            error = np.abs(reranker.predict(pairs, activation_fn=identity) - expected).max()
            print(f"  {name}: ours {dtype} max |logit - CrossEncoder's| = {error:.2e}")


if __name__ == "__main__":
    main()
