#!/usr/bin/env bash
# Pseudo-to-Real against the real model trained from scratch, for the same
# wall-clock budget on this machine: configs/p2r-small-pseudo.yaml (8 layers
# sharing one set, delinked at step 80) and configs/p2r-small-real.yaml run
# side by side, one thread each, so that both see the same machine load; the
# pair is repeated with other seeds. scripts/plot_p2r.py then writes the
# table (eval loss at equal time) and the plot.
#
# usage: scripts/p2r-evidence.sh [--seeds "1234 1235"] [--steps N] [--out PREFIX]
#   --seeds   one pair of runs per seed (default "1234 1235")
#   --steps   train.steps of both runs (default: the configs' 300)
#   --out     output prefix (default bench/results/p2r-small -> .md and .png)
# env: M6TRAIN  the binary (default build/m6train, built if missing)
# Needs python3-matplotlib (installed with apt-get when missing and allowed).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="1234 1235"
steps=""
out=bench/results/p2r-small
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "p2r-evidence: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
PY=/usr/bin/python3
M6=${M6TRAIN:-build/m6train}

if [[ ! -x $M6 ]]; then
  echo "p2r-evidence: building $M6"
  cmake -S . -B build -G Ninja -DM6_CUDA=OFF >/dev/null
  cmake --build build --target m6train
fi
if ! $PY -c "import matplotlib" 2>/dev/null; then
  echo "p2r-evidence: installing python3-matplotlib for the plot"
  if [[ $(id -u) == 0 ]]; then apt-get install -y --no-install-recommends python3-matplotlib
  else sudo apt-get install -y --no-install-recommends python3-matplotlib; fi
fi
scripts/build-corpus.sh "$M6" data/fortunes

root=runs/p2r-evidence-$(date +%Y%m%d-%H%M%S)
mkdir -p "$root" "$(dirname "$out")"
export OMP_WAIT_POLICY=PASSIVE
pairs=()
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for seed in $seeds; do
  sets=(--set train.seed="$seed")
  [[ -n $steps ]] && sets+=(--set train.steps="$steps")
  echo "p2r-evidence: seed $seed: Pseudo-to-Real and real from scratch, side by side"
  "$M6" --config configs/p2r-small-pseudo.yaml --run-dir "$root/p2r-$seed" "${sets[@]}" \
    > "$root/p2r-$seed.log" 2>&1 &
  p2r_pid=$!
  "$M6" --config configs/p2r-small-real.yaml --run-dir "$root/real-$seed" "${sets[@]}" \
    > "$root/real-$seed.log" 2>&1 &
  real_pid=$!
  wait "$p2r_pid"
  wait "$real_pid"
  tail -n 1 "$root/p2r-$seed.log" "$root/real-$seed.log"
  pairs+=(--pair "$root/p2r-$seed" "$root/real-$seed")
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
note="Machine: $(nproc) cores ($cpu), shared with other jobs: load average $load_before before,"
note+=" $load_after after. Each pair ran side by side, 1 thread per run, CPU backend. $(date -u +%Y-%m-%d)."
$PY scripts/plot_p2r.py "${pairs[@]}" --md "$out.md" --png "$out.png" --note "$note"
cat "$out.md"
