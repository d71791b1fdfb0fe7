#!/usr/bin/env bash
# On the GPU machine (device tool, carry [".gpu"]; fill .gpu/ first with bench/gpu/prepare.sh): installs the carried
# wheels beside the image's torch, then runs every GPU check within the time given (default 420 s), writing
# gpu_checks.md, gpu_checks.json and gpu_checks.log into $OUT (or ./gpu-out).
#
#     bash bench/gpu/run.sh [--budget 420] [--only packed_exact,sft_lora_bf16,...]
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl > "$out/install.log" 2>&1 \
    || { cat "$out/install.log"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-liger .gpu/liger/*.whl >> "$out/install.log" 2>&1 \
    || { cat "$out/install.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TUNESMITH_STORIES=$PWD/.gpu/stories260K
exec python3 bench/gpu/checks.py --out "$out" "$@"
