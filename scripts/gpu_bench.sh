#!/usr/bin/env bash
# The classifier pipeline benchmark on a CUDA machine, in one go, ~7 minutes: CUDA tests, the model alone on
# each runtime (`stylestream bench runtime`: PyTorch eager vs ONNX Runtime's providers), then
# `stylestream bench pipeline` on 1080 px photos with EfficientNet-Lite0 @224: model alone (AMP) at batch
# 32/128/512, decode alone (nvJPEG), pipeline with a max_batch sweep and the GPU's utilisation. Writes
# $OUT/bench_runtime_gpu.json and $OUT/bench_pipeline_gpu.json (+ pytest and worker logs in $OUT); the
# pipeline report is rewritten after every phase, so a run cut short still leaves what it measured ("complete").
# Failing tests do not stop the benchmark (one GPU session) but make the script exit 1 at the end.
#
#   GPU machine, repo root (wheels in .whl/):  OUT=/some/dir bash scripts/gpu_bench.sh
#   rehearsal on a CPU machine, tiny sizes:     bash scripts/gpu_bench.sh --cpu-smoke   (OUT: a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-gpu}
# A rehearsal's tiny CPU figures must never land in reports/ under the GPU report's name.
if [[ $MODE == gpu ]]; then OUT=${OUT:-$PWD/reports}; else OUT=${OUT:-$(mktemp -d)}; fi
mkdir -p "$OUT"
T0=$(date +%s)
STATUS=0
step() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

if [[ $MODE == gpu ]]; then
  step "installing wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  PY=python3
  DEVICE=cuda
  nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu --format=csv || true
  $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())"
  BENCH=(--workload realistic --posts 4000 --max-batches 1,8,32,128 --model-batches 8,32,128,512
         --latency-posts 300 --run-timeout 90)
  RUNTIME_BENCH=(--batches 32,128,512 --rounds 3 --images 1024)
  TESTS_TIMEOUT=170
  BENCH_TIMEOUT=330
elif [[ $MODE == --cpu-smoke ]]; then
  export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
  PY=${PYTHON:-/work/main/.venv/bin/python}
  DEVICE=cpu
  BENCH=(--workload realistic --image-size 256 --input-size 64 --backbone tiny --posts 64 --distinct 8
         --max-batches 1,8 --model-batches 8 --latency-posts 20 --run-timeout 120)
  RUNTIME_BENCH=(--batches 8 --rounds 1 --images 8)
  TESTS_TIMEOUT=300
  BENCH_TIMEOUT=400
else
  fail "usage: $0 [--cpu-smoke]"
fi

step "the classify path and the benchmark import without the text miner (no gensim there)"
if $PY -X importtime -c "import workers.classify, workers.benchmarks.pipeline" 2>&1 | grep -E "gensim|nltk"; then
  fail "the classifier imports the text miner"
fi

step "CUDA-path tests (skipped without CUDA), decode, sink, and the bad-input suite through a real worker"
if ! STYLESTREAM_DEVICE=$DEVICE timeout "$TESTS_TIMEOUT" $PY -m pytest -q -rs -p no:cacheprovider \
    tests/serving/test_predict.py tests/serving/test_decode.py tests/streamcore/test_sinks.py \
    tests/integration/test_bad_input.py tests/integration/test_hotswap_stream.py tests/serving/models \
    2>&1 | tee "$OUT/gpu_tests.log" | tail -20; then
  echo "TESTS FAILED (see $OUT/gpu_tests.log); benchmarking anyway" >&2
  STATUS=1
fi

# The model alone on PyTorch eager (AMP) and ONNX Runtime (its CUDA provider, and TensorRT's where the
# installed onnxruntime has it: the wheels need onnxruntime-gpu for those). A failure here does not cost
# the pipeline benchmark.
step "runtime benchmark on $DEVICE: eager vs ONNX Runtime providers, model alone"
if ! timeout 150 $PY -m workers.cli bench runtime --device "$DEVICE" "${RUNTIME_BENCH[@]}" \
    --out "$OUT/bench_runtime_gpu.json" 2>&1 | tail -20; then
  echo "RUNTIME BENCHMARK FAILED" >&2
  STATUS=1
fi

step "pipeline benchmark on $DEVICE"
timeout "$BENCH_TIMEOUT" $PY -m workers.cli bench pipeline "${BENCH[@]}" --device "$DEVICE" \
  --logs "$OUT/worker_logs" --out "$OUT/bench_pipeline_gpu.json" || fail "benchmark (partial report kept)"
step "done: $OUT/bench_pipeline_gpu.json"
exit $STATUS
