#!/usr/bin/env bash
# The whole GPU proof as one prepared command for a lent GPU machine (no network, Python 3.12 with
# torch but no diffusers): install the wheels that scripts/device_wheels.sh put in .whl/, run every
# stage of `python -m fp8pipe check` within one budget, and pack the reports into one archive
# (a device call brings back only a few files).
# Usage, on the GPU machine from the repo root: scripts/device_check.sh [TOTAL_S] [OUT_DIR] [-- CHECK OPTIONS]
#   TOTAL_S   seconds for the whole check (default 480: one 10-minute call with room for installing)
#   OUT_DIR   where the archive goes (default $OUT when set, else the current folder)
set -uo pipefail
total="${1:-480}"
dest="${2:-${OUT:-.}}"
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
reports=bench/results/gpu-check
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -m fp8pipe check --total-s "$total" --out "$reports" "$@" 2>&1 | tee "$reports.log"
status=${PIPESTATUS[0]}
mkdir -p "$dest"
tar czf "$dest/gpu-check.tgz" "$reports" "$reports.log"
cp "$reports/summary.md" "$dest/summary.md" 2>/dev/null || true
echo "check exit $status; reports packed into $dest/gpu-check.tgz"
exit "$status"
