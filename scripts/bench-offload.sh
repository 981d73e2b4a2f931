#!/usr/bin/env bash
# Throughput of granular offload and activation checkpointing, measured in one
# run against the resident baseline (DESIGN.md principle 6: ratios, never an
# asserted speed). Trains --config for --steps steps with
#   offload.optimizer = offload.params = 0, 0.25, 0.5, 1
#   and train.recompute = attention, layer (no offload)
# and prints tokens/s (median of the logged steps after the first), the ratio
# to the baseline, and the device / host arena peaks from metrics.jsonl.
#
# usage: scripts/bench-offload.sh [--steps N] [--config FILE] [--device cpu|cuda]
# env: THREADS=n  train.threads (default: the config's)
#
# What the numbers mean: on the CPU backend "device" and "host" are the same
# RAM, so offload costs the extra copies (weights streamed in per layer and
# pass, gradients and weights through the host staging pieces) and the
# recompute modes cost their extra forward work; nothing is hidden by overlap.
# On CUDA the weight stream runs one layer ahead on a side copy stream
# (Backend::copy_async), so only PCIe time beyond a layer's compute shows,
# and the host AdamW runs beside the device's, its gradient pieces coming
# down one piece ahead of the update (two staging sets): what shows is the
# larger of the PCIe time and the host update's time.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=12
config=configs/tiny.yaml
device=cpu
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench-offload: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
PY=/usr/bin/python3
M6=build/m6train
if [[ ! -x $M6 ]]; then
  echo "bench-offload: building $M6"
  cmake -S . -B build -G Ninja -DM6_CUDA=OFF >/dev/null
  cmake --build build --target m6train
fi
scripts/build-corpus.sh "$M6" data/fortunes >/dev/null

tmp=$(mktemp -d "${TMPDIR:-/tmp}/m6_bench_offload.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
sets=(--set "data.train=data/fortunes/train_*.bin" --set "data.val=data/fortunes/val_*.bin"
      --set log.every=1 --set eval.every=0 --set eval.batches=1 --set checkpoint.every=0
      --set train.device="$device")
[[ -n ${THREADS:-} ]] && sets+=(--set "train.threads=$THREADS")

variants=("offload 0|" "offload 0.25|--set offload.optimizer=0.25 --set offload.params=0.25"
          "offload 0.5|--set offload.optimizer=0.5 --set offload.params=0.5"
          "offload 1|--set offload.optimizer=1 --set offload.params=1"
          "optimizer only 1|--set offload.optimizer=1"
          "recompute attention|--set train.recompute=attention"
          "recompute layer|--set train.recompute=layer")
echo "bench-offload: $config, $steps steps per variant, device $device"
i=0
for v in "${variants[@]}"; do
  name=${v%%|*} args=${v#*|}
  # shellcheck disable=SC2086
  "$M6" --config "$config" --run-dir "$tmp/run$i" --max-steps "$steps" "${sets[@]}" $args \
    >"$tmp/run$i.log" 2>&1 || { echo "bench-offload: '$name' failed:" >&2; tail "$tmp/run$i.log" >&2; exit 1; }
  echo "$name|$tmp/run$i/metrics.jsonl" >> "$tmp/list"
  i=$((i + 1))
done
"$PY" - "$tmp/list" <<'PY'
import json, statistics, sys
rows = []
for line in open(sys.argv[1]):
    name, path = line.rstrip("\n").split("|")
    recs = [json.loads(l) for l in open(path) if '"kind":"train"' in l]
    tps = [r["tokens_per_s"] for r in recs[1:]] or [recs[0]["tokens_per_s"]]
    last = recs[-1]
    rows.append((name, statistics.median(tps), last["mem_peak_bytes"], last["mem_host_peak_bytes"]))
base = rows[0][1]
print(f"| variant | tokens/s | vs offload 0 | device peak MiB | host peak MiB |")
print(f"|---|--:|--:|--:|--:|")
for name, tps, dev, host in rows:
    print(f"| {name} | {tps:.0f} | {tps / base:.2f} | {dev / 2**20:.1f} | {host / 2**20:.1f} |")
PY
