# Sourced by the device scripts (device_check.sh, device_deadline.sh): $OUT made, the kit's wheels on
# PYTHONPATH, and nvidia-smi sampled every 2 s into $OUT/util.csv until the script exits.
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 > "$OUT/util.csv" &
SMI=$!
trap 'kill $SMI' EXIT
