#!/usr/bin/env bash
# From nothing to a trained tiny MoE model on this machine's CPU:
#   1. install the build/runtime Debian packages (scripts/setup.sh --runtime)
#   2. build the m6train binary (build/, Release, CPU only, no tests)
#   3. build the token shards of the embedded corpus (the fortune files) into
#      data/fortunes/, unless they already exist
#   4. train configs/tiny.yaml into runs/tiny-<date>-<time>/
#   5. plot its loss curves into <run>/loss.png (scripts/plot-run.py)
# then print the run directory, the final eval loss and a 200-byte sample
# from the trained model (m6train generate).
#
#   scripts/quickstart.sh [m6train options...]
# Options are passed to the training run, e.g. --max-steps 50 or
# --set train.threads=4.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

data_dir=data/fortunes
config=configs/tiny.yaml

# Runs one named phase, prints its wall time, and stops the script with the
# phase's exit code when it fails.
phase_times=()
phase() {
  local name=$1
  shift
  echo
  echo "=== quickstart: $name"
  local start end rc=0
  start=$(date +%s.%N)
  "$@" || rc=$?
  end=$(date +%s.%N)
  local took
  took=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if ((rc != 0)); then
    echo "quickstart: '$name' failed with exit code $rc after ${took}s" >&2
    exit "$rc"
  fi
  echo "=== quickstart: $name took ${took}s"
  phase_times+=("$(printf '%-8s %8ss' "$name" "$took")")
}

# Functions run by phase() are in an `||` context where set -e does not apply:
# each one chains its commands with && or returns explicitly.
configure_and_build() {
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DM6_CUDA=OFF -DM6_TESTS=OFF &&
    cmake --build build --target m6train -j"$(nproc)"
}

build_corpus() {
  scripts/build-corpus.sh build/m6train "$data_dir"
}

# The last {"kind":"eval",...} record of metrics.jsonl, field eval_loss.
final_eval_loss() {
  local metrics=$1
  if command -v python3 >/dev/null 2>&1; then
    python3 -c '
import json, sys
loss = None
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if line:
            rec = json.loads(line)
            if rec.get("kind") == "eval":
                loss = rec.get("eval_loss")
if loss is None:
    sys.exit(1)
print(loss)
' "$metrics"
  else
    # No python3 (setup.sh --runtime does not require it): metrics.jsonl is
    # written compactly, one object per line, so a text match is exact enough.
    local value
    value=$(grep '"kind":"eval"' "$metrics" | tail -n 1 |
      sed -n 's/.*"eval_loss":\([^,}]*\).*/\1/p')
    [[ -n $value && $value != null ]] || return 1
    echo "$value"
  fi
}

total_start=$(date +%s)

phase setup scripts/setup.sh --runtime
phase build configure_and_build
phase corpus build_corpus

run_dir=runs/tiny-$(date +%Y%m%d-%H%M%S)
phase train build/m6train --config "$config" --run-dir "$run_dir" "$@"

metrics=$run_dir/metrics.jsonl
if [[ ! -f $metrics ]]; then
  echo "quickstart: training finished but $metrics does not exist" >&2
  exit 1
fi
if ! loss=$(final_eval_loss "$metrics"); then
  echo "quickstart: no eval record with a finite eval_loss in $metrics" >&2
  exit 1
fi

phase plot /usr/bin/python3 scripts/plot-run.py "$run_dir"

echo
echo "=== quickstart: done in $(($(date +%s) - total_start))s"
printf '  %s\n' "${phase_times[@]}"
echo "run directory:   $repo_root/$run_dir"
echo "final eval loss: $loss"
echo "loss curves:     $repo_root/$run_dir/loss.png"
echo
echo "=== a 200-byte sample from the trained model (build/m6train generate --run-dir $run_dir):"
build/m6train generate --run-dir "$run_dir" --tokens 200
