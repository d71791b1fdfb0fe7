#!/usr/bin/env bash
# Fills .gpu/ (ignored by git) with what bench/gpu/run.sh needs on a GPU machine that reaches no package index:
# wheels of the pinned versions its image lacks (constraints.txt; bitsandbytes with only its CUDA 13 libraries, to
# fit the 64 MiB a device call carries; DeepSpeed, which PyPI has as a source archive only, built here into a
# pure-Python wheel whose ops compile on first use), Liger Kernel, and stories260K.
#
#     bash bench/gpu/prepare.sh            # here, once (about 40 MB, a minute)
#     then, through the device tool:  bash bench/gpu/run.sh   with carry [".gpu"]
#
# Not carried, and why: vLLM (its wheel is over 400 MB), flash-attn (no wheel on PyPI; a source build takes about
# an hour), the demo model's GGUF (100 MB; the checks use stories260K and a random model of Qwen2.5-0.5B's shape).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
dest=.gpu
rm -rf "$dest" && mkdir -p "$dest/whl" "$dest/liger"
pin() { grep -i "^$1==" constraints.txt | head -1; }
platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
fetch() { "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d "$1" "${@:2}"; }

# The GPU image has torch, accelerate, numpy, pandas, pyarrow, safetensors, jinja2, rich, typer, tqdm, psutil,
# msgpack, einops, py-cpuinfo, nvidia-ml-py, ninja, matplotlib and sacrebleu (device/KINDS.md); the rest at our pins.
fetch "$dest/whl" $(for p in transformers huggingface_hub tokenizers trl peft datasets dill multiprocess pydantic pydantic_core \
    annotated-types typing-inspection typing_extensions jsonschema jsonschema-specifications referencing rpds-py gguf xxhash fsspec bitsandbytes; do
    pin "$p" || echo "$p"; done) hjson
fetch "$dest/liger" liger-kernel

# bitsandbytes ships a library per CUDA version (120 MB); the image's torch is CUDA 13.
wheel=$(ls "$dest"/whl/bitsandbytes-*.whl)
work=$(mktemp -d)
(cd "$work" && unzip -q "$OLDPWD/$wheel" && rm -f bitsandbytes/libbitsandbytes_cuda1[0-2]*.so bitsandbytes/libbitsandbytes_rocm*.so && rm "$OLDPWD/$wheel" && zip -q -r -9 "$OLDPWD/$wheel" .)
rm -rf "$work"

"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$dest/whl" deepspeed

cp -r ../shared/models/stories260K "$dest/stories260K"
du -sh "$dest"
