#!/usr/bin/env bash
# Issue 33's GPU figures: a search with a deadline per bundled competition, as shipped, with the GPU's
# utilisation sampled over the whole search (per-epoch speed alone hides an idle GPU). Stage the kit
# and the data in the ignored .gpu/ first (../shared/device-kit/README.md; 64 MiB a call in all):
#
#   mkdir -p .gpu && cp -r ../shared/device-kit/wheels ../shared/device-kit/uhcs-jpeg90 .gpu/
#   device run, carry [".gpu"], timeout 600:  TIMEOUT=480 bash benchmarks/device_deadline.sh
#
# COMPETITIONS names the competition folders and DATA their data roots, in order (default: uhcs-phase
# on the kit's copy). Every bundled competition at --timeout 900 is six such calls, one each.
# Writes $OUT/deadline.json (benchmarks/deadline.py) and $OUT/util.csv (nvidia-smi every 2 s).
set -euo pipefail
OUT=${OUT:-/tmp/device-deadline}
source "$(dirname "$0")/device_env.sh"
args=()
read -r -a comps <<< "${COMPETITIONS:-competitions/uhcs-phase}"
read -r -a roots <<< "${DATA:-.gpu/uhcs-jpeg90}"
for i in "${!comps[@]}"; do
    args+=(--competition "${comps[$i]}" --data-root "${roots[$i]}")
done
python3 benchmarks/deadline.py --timeout "${TIMEOUT:-900}" "${args[@]}" > "$OUT/deadline.json"
cat "$OUT/deadline.json"
