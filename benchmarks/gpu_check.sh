#!/usr/bin/env bash
# The whole accelerator check of issue 10 in one run (aim: under 8 minutes on an H100/H200).
#
# Prepare on a CPU machine first: `python benchmarks/make_gpu_bundle.py` writes .gpu/ (float16 model copy + STS-B
# dev), which travels with the working tree (the official 87 MB weights do not fit). Then, on the GPU machine:
#   bash benchmarks/gpu_check.sh            # DEVICE=cuda:0 by default; OUT=folder for logs and reports
# It needs torch, transformers, sentence-transformers, tokenizers, safetensors, numpy, tqdm, matplotlib there;
# the project runs from src/ (no install). Writes env.txt, tests.txt, report.tgz (check/accuracy/bench reports with
# plots), report.txt, bench_gpu.md and bench_gpu.json into $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
BUNDLE=${BUNDLE:-.gpu}
DEVICE=${DEVICE:-cuda:0}
MODEL="$BUNDLE/all-MiniLM-L6-v2-float16"
mkdir -p "$OUT"
# Tokenizers keep their default (parallel) batch encoding, as users run them: sentence-transformers gets it too.
export PYTHONPATH="$PWD/src:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export MINILM_TEST_DEVICE="$DEVICE" MINILM_TEST_MODEL="$PWD/$MODEL" MINILM_TEST_STSB="$PWD/$BUNDLE/stsb-dev.tsv"
PY=${PYTHON:-python3}
status=0

echo "== environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
  $PY -c "import torch, transformers, sentence_transformers as st, tokenizers
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__,
      'sentence-transformers', st.__version__, 'tokenizers', tokenizers.__version__)
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none',
      'tf32 matmul', torch.backends.cuda.matmul.allow_tf32)"; } 2>&1 | tee "$OUT/env.txt"

echo "== exactness tests on $DEVICE"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/integration/test_device_path.py tests/unit/test_graphs.py \
    tests/unit/test_devices.py 2>&1 | tee "$OUT/tests.txt" || status=1

echo "== report (check, accuracy with STS-B, bench vs sentence-transformers)"
timeout 200 $PY -m minilm_npu.cli.main report --device "$DEVICE" --dtype float32,float16,bfloat16 \
    --compare sentence-transformers --compare-cpu --model-path "$MODEL" --reference-model-path "$MODEL" \
    --sts "$BUNDLE/stsb-dev.tsv" --out "$OUT/report" 2>&1 | tail -n 60 | tee "$OUT/report.txt" || status=1
tar czf "$OUT/report.tgz" -C "$OUT" report && rm -rf "$OUT/report"

echo "== targets: bench_gpu.py"
timeout 150 $PY benchmarks/bench_gpu.py --device "$DEVICE" --model-path "$MODEL" \
    --stsb "$BUNDLE/stsb-dev.tsv" --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.md" || status=1
exit $status
