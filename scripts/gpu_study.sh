#!/usr/bin/env bash
# The one-call GPU study, on one machine with a CUDA PyTorch already installed (no cluster, no MLflow, no KFP).
# Stages in order of what matters most, each under its own timeout and writing to OUT as it goes, so that a late
# failure or a lease running out keeps what came before:
#   0. installs the few carried wheels (.whl/, from scripts/gpu_study-requirements.txt) if pydantic is missing,
#      and prepares ESC-10 for EnvNet (16 kHz) from a raw ESC-50-layout folder (default: .esc10/);
#   t. tune (TUNE=1, the default): benchmarks/bench_options.py times MODEL's step under the float32 speed options
#      (cuDNN's autotuner, channels-last) side by side and the study runs with the fastest one, if it beats the
#      plain step by 3 % (tune.json; the study's `--set optim.KEY=VALUE`, recorded in study.json);
#   1. study: the packaged gpu-study grid (EnvNet, ESC-10, 4 strategies x 5 folds, the reference schedule) with
#      CONCURRENCY workers at once, each a pack of PACK folds of one cell trained as one fused model
#      (intermix_core/method/pack.py; PACK=1: one fold per worker, as before packs), stopping at BUDGET seconds
#      (study/: fold results, reports/, study.json);
#   2. throughput: benchmarks/bench_throughput.py (data path, step, full step, 10-crop test; fp32 and bf16; and the
#      aggregate of a pack of PACK folds);
#   3. update: benchmarks/bench_update.py (Chainer's NesterovAG: the foreach passes against the compiled kernel chain
#      the GPU uses by default, for one fold and for a pack of PACK);
#   3b. mixing: benchmarks/bench_mixing.py (each strategy's step against Standard's);
#   4. options: benchmarks/bench_options.py (bf16, channels-last, cuDNN's autotuner against the plain step);
#   5. profile: benchmarks/bench_profile.py (the kernels a step spends its device time in, and how busy the device is);
#   6. estimate: `intermix estimate paper` from the throughput just measured.
# Everything lands in OUT (default: $OUT if set, else ./gpu-study-out): study/, throughput.json, <stage>.log,
# gpu-study.log. The study's steps (prepare, study, estimate) need PyTorch and pydantic/soundfile only: no MLflow,
# boto3 or kfp (pipelines/local_commands.py). Settings through the environment:
#   ESC10=.esc10 BUDGET=330 CONCURRENCY=4 PACK=5 BENCH_MODELS="envnet envnet_v2" PYTHON=python3 STAGE_SLACK=45
#   DEVICE=cuda
#   GRID=gpu-study MODEL=envnet BENCHMARKS=1 STUDY_DIR=$OUT/study LOGS=$OUT PREPARED=/tmp/intermix-esc10-$MODEL
#   TUNE=1 TUNE_VARIANTS="cudnn_benchmark channels_last channels_last+cudnn_benchmark" TUNE_REPEATS=5
# With STUDY_DIR outside OUT, OUT gets the study's study.json, table1.md, report.html and summary.json (not its
# checkpoints): what a lent machine sends back is a few small files.
# Time: about 20 s of set-up and preparation, up to 90 s of tuning, the study's BUDGET plus at most STAGE_SLACK
# (the finishing folds' FGSM and the reports), then 3 to 5 minutes of benchmarks (BENCHMARKS=0 leaves them out).
# One call on an H200 took 465 s with BUDGET=320 before the tuning stage existed; a 10-minute call limit then
# leaves room for it with the default BUDGET, or take BENCHMARKS=0 for a longer study.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ESC10=${ESC10:-.esc10}
BUDGET=${BUDGET:-330}
CONCURRENCY=${CONCURRENCY:-4}   # on an H200 ten EnvNet workers trained 1.4x one process's samples/s (README,
                                # Measured): fewer workers lose little and finish folds sooner inside a budget
PACK=${PACK:-5}                 # folds of a cell per worker, as one fused model: 4 packs of 5 = the 20 folds at once
DEVICE=${DEVICE:-cuda}
GRID=${GRID:-gpu-study}        # a grid of one dataset x setup (a file or a packaged grid)
MODEL=${MODEL:-envnet}        # the model whose sample rate the data is prepared at
BENCHMARKS=${BENCHMARKS:-1}   # 0: stop after the study
BENCH_MODELS=${BENCH_MODELS:-"envnet envnet_v2"}
TUNE=${TUNE:-1}               # 0: the study runs with the grid's options as they are
TUNE_VARIANTS=${TUNE_VARIANTS:-"cudnn_benchmark channels_last channels_last+cudnn_benchmark"}
TUNE_REPEATS=${TUNE_REPEATS:-5}
DEST=${OUT:-gpu-study-out}
STUDY_DIR=${STUDY_DIR:-$DEST/study}   # fold results and checkpoints (EnvNet's are ~400 MB each)
LOGS=${LOGS:-$DEST}                   # one <stage>.log per stage, beside gpu-study.log (which has them all)
PREPARED=${PREPARED:-/tmp/intermix-esc10-$MODEL}
mkdir -p "$DEST" "$STUDY_DIR" "$LOGS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PYTHON" -c "import pydantic, soundfile" 2>/dev/null; then
  [ -d .whl ] || { echo "pydantic/soundfile missing and no .whl folder to install them from (docs/gpu-study.md)" >&2; exit 2; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/intermix-site .whl/*.whl
  export PYTHONPATH="/tmp/intermix-site:$PYTHONPATH"
fi
STAGE_SLACK=${STAGE_SLACK:-45}
log="$DEST/gpu-study.log"
stage() {  # stage NAME SECONDS COMMAND...: run under a timeout, output to OUT/NAME.log and the log; never abort
  local name=$1 seconds=$2 rc=0
  shift 2
  echo "== $(date -u +%FT%TZ) stage $name (at most ${seconds} s)" | tee -a "$log"
  timeout --kill-after=10 "$seconds" "$@" > >(tee "$LOGS/$name.log" >> "$log") 2>&1 || rc=$?
  echo "== $(date -u +%FT%TZ) stage $name: exit $rc" | tee -a "$log"
}
{
  echo "== $(date -u +%FT%TZ) $("$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
} | tee -a "$log"
stage prepare 120 "$PYTHON" -m pipelines.cli prepare --dataset esc10 --source "$ESC10" --model "$MODEL" --out "$PREPARED"
SETS=()
if [ "$TUNE" = 1 ]; then
  # shellcheck disable=SC2086  # the variant list splits into words
  stage tune 90 "$PYTHON" benchmarks/bench_options.py --device "$DEVICE" --models "$MODEL" --variants $TUNE_VARIANTS \
      --repeats "$TUNE_REPEATS" --save "$DEST/tune.json"
  if [ -f "$DEST/tune.json" ]; then  # the pick's --set arguments, one word per line
    mapfile -t SETS < <("$PYTHON" -c 'import json, sys
for item in json.load(open(sys.argv[1]))["pick"][sys.argv[2]]["set"]:
    print("--set"); print(item)' "$DEST/tune.json" "$MODEL" 2>>"$log") || SETS=()
  fi
  echo "== study options: ${SETS[*]:-as the grid sets them}" | tee -a "$log"
fi
stage study $((BUDGET + STAGE_SLACK)) "$PYTHON" -m pipelines.cli study "$GRID" --data "$PREPARED" \
    --out "$STUDY_DIR" --budget "$BUDGET" --concurrency "$CONCURRENCY" --pack "$PACK" --device "$DEVICE" "${SETS[@]}"
if [ "$STUDY_DIR" != "$DEST/study" ]; then  # the study's small outputs beside the log (not its checkpoints)
  for f in study.json reports/table1.md reports/report.html reports/summary.json; do
    if [ -f "$STUDY_DIR/$f" ]; then cp "$STUDY_DIR/$f" "$DEST/$(basename "$f")"; fi
  done
fi
[ "$BENCHMARKS" = 1 ] || exit 0
stage throughput 90 "$PYTHON" benchmarks/bench_throughput.py --device "$DEVICE" --models $BENCH_MODELS --repeats 5 \
    --pack "$PACK" --save "$DEST/throughput.json"
stage update 120 "$PYTHON" benchmarks/bench_update.py --device "$DEVICE" --models $BENCH_MODELS --packs 1 "$PACK" \
    --repeats 5 --save "$DEST/update.json"
stage mixing 60 "$PYTHON" benchmarks/bench_mixing.py --device "$DEVICE" --models $BENCH_MODELS m18 soundnet5 --repeats 10
# every variant but the compiled ones (no gain on the H200, 2026-12-04, and a long warm-up each), a process each
stage options 90 "$PYTHON" benchmarks/bench_options.py --device "$DEVICE" --models envnet_v2 --repeats 5 --no-compile \
    --save "$DEST/options.json"
stage profile 60 "$PYTHON" benchmarks/bench_profile.py --device "$DEVICE" --models $BENCH_MODELS --steps 10
if [ -f "$DEST/throughput.json" ]; then
  stage estimate 20 "$PYTHON" -m pipelines.cli estimate paper --throughput "$DEST/throughput.json" --device "$DEVICE" \
      --pack "$PACK"
fi
