#!/usr/bin/env bash
# The prepared GPU check of the trainer, in one go within 480 s on one H100/H200, no network. Writes
# gpu_check.json (every step's verdict and figures) and gpu_check.log (every step's output) to
# $OUT (default bench-gpu/) and prints one verdict line per step. Missing packages travel as wheels:
# run bench/gpu_wheels.sh on a machine with PyPI first, then
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
#   bash bench/gpu_check.sh --rehearse    # the same steps on this CPU, tiny shapes (~1 minute;
#                                         # tests/test_gpu_check.py runs it)
#
# Steps (bench/gpu_check.py; each time-boxed, a failed one is recorded and the next one runs):
#   imports           every package the check needs imports; whether CTranslate2 can use this GPU
#   trainer_tests     tests/test_train_{precision,packing_check,rundir,trainer}.py on CUDA
#   fsdp_accelerate   `accelerate launch` with configs/accelerate/fsdp.yaml, one process: trains
#                     and clips (grad_norm > 0) whatever accelerate did to the model
#   packing           packed = padded at Llama-3-8B layer shapes, bf16, sdpa and flash (if installed)
#   train_throughput  clo's CLO step against TRL's (bench/trl_anchor.py) at Llama-3-8B shapes,
#                     1,558 tokens per example: examples/s (reference pass counted), peak memory
#   memory            the step's memory estimated on fake tensors (clo train --estimate-memory) beside
#                     torch.cuda.max_memory_allocated of the same step, Llama-3-8B, 16,384 tokens
#   translate         CTranslate2 against generate at M2M100-1.2B shapes, batch 128
# A rehearsal adds `wheels`: every distribution the steps imported is in the device image
# (bench/device_image.txt) or among the fetched wheels (bench/gpu_requirements.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
export GPU_CHECK_T0=$(date +%s)
PY=${PY:-python3}
if [ "${1:-}" = "--rehearse" ] && [ -x .venv/bin/python ] && [ -z "${PY_SET:-}" ]; then
  PY=.venv/bin/python  # the project's environment where it has one
fi
if [ "${1:-}" != "--rehearse" ] && [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PY
exec $PY bench/gpu_check.py "$@"
