#!/usr/bin/env bash
# On a GPU machine (driver + CUDA + Python only): runs the CUDA backend's
# checks and prints a short table.
#   1. the [cuda] op test (every op of backend.h, CUDA against the CPU
#      reference, then a tiny model's loss and gradients);
#   2. a short training run of a tiny config with train.device: cuda, and the
#      same run with train.device: cpu, comparing their first losses.
# Uses bundle/ (scripts/gpu-bundle.sh, built elsewhere) when present, else
# builds build-gpu here (needs cmake, ninja and the Debian packages of
# scripts/setup.sh). Single-rank: no MPI launcher needed (m6train calls
# MPI_Init only under one); multi-rank CUDA is refused until NCCL lands.
# Usage: scripts/gpu-check.sh [BUNDLE_DIR]
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
bundle=${1:-$src/bundle}
export OMP_WAIT_POLICY=PASSIVE

if [[ -x "$bundle/run" ]]; then
  run() { "$bundle/run" "$@"; }
else
  build=$src/build-gpu
  cmake -S "$src" -B "$build" -G Ninja -DM6_CUDA=ON -DM6_TESTS=ON || exit 1
  ninja -C "$build" m6train test_cuda_ops || exit 1
  run() {
    local prog=$1
    shift
    if [[ $prog == m6train ]]; then "$build/m6train" "$@"; else "$build/tests/$prog" "$@"; fi
  }
fi
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
declare -a rows

# 1. op test
run test_cuda_ops > "$tmp/ops.txt" 2>&1
rc=$?
failed=$(grep -c '^FAIL' "$tmp/ops.txt" || true)
passed=$(grep -c '^ok' "$tmp/ops.txt" || true)
case $rc in
  0) rows+=("cuda op test|PASS|$passed checks") ;;
  77)
    # A GPU that nvidia-smi lists but the CUDA runtime cannot see usually
    # means a driver older than the toolkit the bundle was built with (CUDA
    # 13.0 needs driver >= 580).
    if command -v nvidia-smi > /dev/null && nvidia-smi -L 2> /dev/null | grep -q GPU; then
      rows+=("cuda op test|FAIL|nvidia-smi lists a GPU, CUDA sees none: driver too old?")
    else
      rows+=("cuda op test|SKIPPED|no CUDA device visible")
    fi
    ;;
  *) rows+=("cuda op test|FAIL (rc $rc)|$failed of $((passed + failed)) checks failed") ;;
esac
grep '^FAIL' "$tmp/ops.txt" | head -20

# 2. tiny training run on each device
corpus=()
for f in "$src/README.md" /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0; do
  [[ -f $f ]] && corpus+=("$f")
done
run m6train data build --input "${corpus[@]}" --output "$tmp/data" --val-fraction 0.1 \
  > "$tmp/data.txt" 2>&1 || { cat "$tmp/data.txt"; rows+=("data build|FAIL|see above"); }
for dev in cuda cpu; do
  cat > "$tmp/$dev.yaml" <<YAML
model:
  vocab_size: 256
  max_seq_len: 64
  d_model: 64
  n_heads: 4
  n_layers: 2
  d_ff: 128
  moe: {every: 2, experts: 4, top_k: 2, capacity_factor: 1.0}
data:
  train: $tmp/data/train_*.bin
  val: $tmp/data/val_*.bin
train: {device: $dev, steps: 40, seq_len: 64, micro_batch: 8, global_batch: 16, threads: 2}
optim: {lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 10}
eval: {every: 20, batches: 4}
log: {every: 10}
YAML
  start=$(date +%s%N)
  if run m6train --config "$tmp/$dev.yaml" --run-dir "$tmp/run-$dev" > "$tmp/$dev.txt" 2>&1; then
    ms=$((($(date +%s%N) - start) / 1000000))
    loss=$(python3 - "$tmp/run-$dev/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
train = [r for r in rows if r.get("kind") == "train" and "loss" in r]
print(" ".join(f"{r['loss']:.4f}" for r in train[:3]) if train else "no train rows")
PY
)
    rows+=("train 40 steps ($dev)|PASS|${ms} ms, first logged losses: $loss")
  else
    tail -5 "$tmp/$dev.txt"
    rows+=("train 40 steps ($dev)|FAIL|see the log above")
  fi
done

echo
printf '%-26s %-14s %s\n' check result detail
for r in "${rows[@]}"; do
  IFS='|' read -r a b c <<< "$r"
  printf '%-26s %-14s %s\n' "$a" "$b" "$c"
done
