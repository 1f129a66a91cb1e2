#!/usr/bin/env bash
# Wheels that a GPU machine without network needs for `python -m fp8pipe check`, into .whl/.
#
# The lent GPU machines have Python 3.12 with torch, transformers, accelerate, safetensors,
# tokenizers, numpy, pillow, tabulate, psutil and pytest, but no diffusers. This downloads
# exactly what is missing (no dependencies beyond these) for cp312 manylinux, and xformers,
# optional, whose wheel names the torch it needs. Then, on that machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# Usage: scripts/device_wheels.sh [DIR]   (default .whl; fails if the folder passes 64 MiB)
set -euo pipefail
dir="${1:-.whl}"
mkdir -p "$dir"
py="${PYTHON:-python3}"
wheels=(
  "diffusers==0.42.1"        # the pipeline (requirements.txt: diffusers>=0.42)
  "importlib_metadata==10.2.0"  # diffusers needs it; not on the GPU image
  "lazy-importer==0.1.0"        # importlib_metadata needs it
  "xformers==0.0.35"            # optional attention backend; needs torch>=2.10
)
"$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dir" "${wheels[@]}"
bytes=$(du -sb "$dir" | cut -f1)
echo "$dir: $(ls "$dir" | wc -l) wheels, $((bytes / 1048576)) MiB"
if [ "$bytes" -ge $((64 * 1048576)) ]; then
  echo "error: $dir is over 64 MiB, the most a device call carries" >&2
  exit 1
fi
