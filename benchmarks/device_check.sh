#!/usr/bin/env bash
# Issue 16's GPU figures in one call on the device machine (Python 3.12 image with torch and timm;
# ../shared/device-kit/README.md). Stage the kit and the faces data in the ignored .gpu/ first:
#
#   mkdir -p .gpu && cp -r ../shared/device-kit/wheels ../shared/device-kit/uhcs-jpeg90 .gpu/ \
#       && cp -r ../shared/data/faces-multihead .gpu/
#   device run, carry [".gpu"], timeout 600:  bash benchmarks/device_check.sh
#
# Writes $OUT/uhcs.json and $OUT/faces.json (benchmarks/search_throughput.py, 1 and 4 workers) and
# $OUT/util.csv (nvidia-smi every 2 s over both). About 8 minutes on one H100-class GPU; TRIALS
# and STEPS shrink it.
set -euo pipefail
OUT=${OUT:-/tmp/device-check}
source "$(dirname "$0")/device_env.sh"
python3 benchmarks/search_throughput.py --competition competitions/uhcs-phase --data-root .gpu/uhcs-jpeg90 \
    --trials "${TRIALS:-6}" --workers 1,4 --set "search.steps=[${STEPS:-600}]" > "$OUT/uhcs.json"
python3 benchmarks/search_throughput.py --competition competitions/faces-multihead --data-root .gpu/faces-multihead \
    --trials "${TRIALS:-6}" --workers 1,4 --set "search.steps=[${STEPS:-800}]" > "$OUT/faces.json"
cat "$OUT"/*.json
