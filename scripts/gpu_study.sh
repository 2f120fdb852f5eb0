#!/usr/bin/env bash
# The one-call GPU study, on one machine with a CUDA PyTorch already installed (no cluster, no MLflow, no KFP):
#   1. installs the few carried wheels (.whl/, from scripts/gpu_study-requirements.txt) if pydantic is missing;
#   2. prepares ESC-10 for EnvNet (16 kHz) from a raw ESC-50-layout folder (default: .esc10/);
#   3. measures throughput (benchmarks/bench_throughput.py: data path, step, full step, 10-crop test;
#      fp32 and bf16), the InterMix/Standard step ratio (benchmarks/bench_mixing.py) and the GPU-speed
#      options against the plain step (benchmarks/bench_options.py);
#   4. runs the packaged gpu-study grid (EnvNet, ESC-10, 4 strategies x 5 folds, the reference schedule)
#      with CONCURRENCY folds at once, printing its own time estimate first and stopping at BUDGET seconds.
# Everything lands in OUT (default: $OUT if set, else ./gpu-study-out): throughput.json, mixing.txt, options.txt,
# study/ (fold results, reports/, study.json), and a log. Settings through the environment:
#   ESC10=.esc10 BUDGET=420 CONCURRENCY=6 BENCH_MODELS="envnet envnet_v2" PYTHON=python3
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ESC10=${ESC10:-.esc10}
BUDGET=${BUDGET:-420}
CONCURRENCY=${CONCURRENCY:-6}
BENCH_MODELS=${BENCH_MODELS:-"envnet envnet_v2"}
DEST=${OUT:-gpu-study-out}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PYTHON" -c "import pydantic, soundfile" 2>/dev/null; then
  [ -d .whl ] || { echo "pydantic/soundfile missing and no .whl folder to install them from (docs/gpu-study.md)" >&2; exit 2; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/intermix-site .whl/*.whl
  export PYTHONPATH="/tmp/intermix-site:$PYTHONPATH"
fi
{
  echo "== $(date -u +%FT%TZ) $("$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  "$PYTHON" -m pipelines.cli prepare --dataset esc10 --source "$ESC10" --model envnet --out /tmp/intermix-esc10-16k
  "$PYTHON" benchmarks/bench_throughput.py --device cuda --models $BENCH_MODELS --repeats 10 --save "$DEST/throughput.json"
  "$PYTHON" benchmarks/bench_mixing.py --device cuda --models $BENCH_MODELS m18 soundnet5 --repeats 20 | tee "$DEST/mixing.txt"
  "$PYTHON" benchmarks/bench_options.py --device cuda --models envnet_v2 --repeats 10 | tee "$DEST/options.txt"
  "$PYTHON" -m pipelines.cli study gpu-study --data /tmp/intermix-esc10-16k --out "$DEST/study" --budget "$BUDGET" \
      --concurrency "$CONCURRENCY" --device cuda --throughput "$DEST/throughput.json" || true
  "$PYTHON" -m pipelines.cli estimate paper --throughput "$DEST/throughput.json" --device cuda
} 2>&1 | tee "$DEST/gpu-study.log"
