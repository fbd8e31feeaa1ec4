#!/usr/bin/env bash
# The Ascend field kit: run this on the machine with the card and send us the one archive it writes.
#
#   bash benchmarks/npu_check.sh                     # npu:0, all dtypes; out/npu/minilm-npu-check-*.tar.gz
#   bash benchmarks/npu_check.sh --sts stsb-dev.tsv  # with STS-B in the accuracy report and the benchmark
#   bash benchmarks/npu_check.sh --dry-run           # no card: the test suite's stand-in torch_npu plays npu:0
#
# In one go and under --time-limit (default 20 minutes): the environment (npu-smi, driver, firmware, CANN, torch,
# torch_npu/op-plugin, compile and precision modes), the device tests on the card, `minilm-npu report` (check,
# accuracy, bench vs sentence-transformers, CPU fallbacks), benchmarks/bench_gpu.py, and a `minilm-npu serve`
# smoke test with one real client. Every item is listed in the archive's MANIFEST.md, with why when it is absent
# or failed. Needs the project's checkout (it runs from src/) with its dependencies and the test extras installed
# (`pip install -e '.[npu,test]'`); CANN's set_env.sh sourced. Options: python benchmarks/npu_check.py --help.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ASCEND_TOOLKIT_HOME:-}" ] && [ -f /usr/local/Ascend/ascend-toolkit/set_env.sh ]; then
    source /usr/local/Ascend/ascend-toolkit/set_env.sh  # what every torch_npu run needs first
fi
exec "${PYTHON:-python3}" benchmarks/npu_check.py "$@"
