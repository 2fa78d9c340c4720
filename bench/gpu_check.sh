#!/usr/bin/env bash
# The prepared GPU check of the trainer (issue "Training where users train"): at most ~8 minutes
# on one H100/H200, no network, results as JSON under $OUT. On a machine without a GPU it says so
# and exits 0. Missing packages travel as wheels (bench/gpu_wheels.sh, then carry .whl):
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# Steps (each time-boxed; a failed step is recorded and the next one runs):
#   1. the trainer's tests on CUDA: precision (bf16 with fp32 masters), packing check, run
#      directories, the training loop (tests/test_train_{precision,packing_check,rundir,trainer}.py)
#   2. accelerate's launcher with configs/accelerate/fsdp.yaml on the one GPU (one process trains
#      unsharded: sharding itself needs 2+ GPUs; it is tested on 2 CPU processes in the suite)
#   3. packed = padded for sdpa and flash attention (where installed), Llama-3-8B layer shapes, bf16
#   4. clo's CLO step against TRL (trl_anchor.py) at Llama-3-8B shapes: examples/s, peak memory
#   5. translation throughput: CTranslate2 against generate, M2M100-1.2B shapes, batch 128
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
if ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo '{"gpu": false, "note": "no CUDA device: nothing checked"}' > "$OUT/gpu_check.json"
  echo "gpu_check: no GPU on this machine; nothing to check"
  exit 0
fi
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT/gpu_check.json"
echo "{\"gpu\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)\", \"steps\": {" > "$SUMMARY"
first=1
step() {  # step NAME SECONDS COMMAND...: run, time, record rc
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$? t=$(( $(date +%s) - t0 ))
  tail -5 "$OUT/$name.log"
  [ $first = 1 ] || echo "," >> "$SUMMARY"
  first=0
  echo "\"$name\": {\"rc\": $rc, \"seconds\": $t}" >> "$SUMMARY"
}
step trainer_tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_train_precision.py \
  tests/test_train_packing_check.py tests/test_train_rundir.py tests/test_train_trainer.py -s
cat > /tmp/fsdp_run.py <<'PYEOF'
import json, sys
from pathlib import Path
from clo.testing import tiny_model, tiny_tokenizer
d = Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
tiny_model("llama", vocab_size=512).save_pretrained(d / "model"); tiny_tokenizer().save_pretrained(d / "model")
rec = {"tgt_lang": "de", "x_en": "what is the cat", "y_en": "the cat runs", "x_tgt": "was ist die Katze",
       "y_tgt": "die Katze läuft"}
(d / "train.jsonl").write_text("".join(json.dumps({**rec, "id": str(i)}) + "\n" for i in range(8)))
PYEOF
$PY /tmp/fsdp_run.py /tmp/fsdp_data >/dev/null 2>&1
step fsdp2_accelerate 90 $PY -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml \
  --num_processes 1 -m clo.cli train --data /tmp/fsdp_data/train.jsonl --output "$OUT/fsdp_run" \
  --set model=/tmp/fsdp_data/model --set train.batch_size=4 --set train.max_length=64
cp "$OUT/fsdp_run/result.json" "$OUT/fsdp_result.json" 2>/dev/null; rm -rf "$OUT/fsdp_run"
step packing 60 $PY bench/packing_check.py --preset llama3-8b --layers 4 --dtype bfloat16 --out "$OUT/packing.json"
step train_throughput 240 $PY bench/train_throughput.py --config llama3-8b --grad-ckpt --steps 6 --warmup 2 \
  --out "$OUT/train_throughput"
step translate_throughput 60 $PY bench/translate_throughput.py --preset m2m100-1.2b --batch 128 --n 256 \
  --out "$OUT/translate_throughput.jsonl"
echo "}}" >> "$SUMMARY"
cat "$SUMMARY"
