#!/usr/bin/env bash
# CPU training throughput of m6train against its peer, the PyTorch reference
# model (tests/ref/m6_torch.py), on the same resolved config, batch and thread
# count, measured in the same run (DESIGN.md principle 6: print ratios, never
# assert speed).
#
# usage: scripts/bench-cpu.sh [--steps N] [--config FILE]
#   --steps N      m6train training steps (default 30; the first logged record
#                  is skipped as warm-up)
#   --config FILE  experiment file (default configs/tiny.yaml)
# env: THREADS=n   thread count for both (default: train.threads, 0 = nproc)
#      TORCH_STEPS timed PyTorch steps (default 10, after 3 warm-up steps)
#      LOG_EVERY   m6train log.every for the run (default 5: enough records to
#                  drop the first)
set -euo pipefail

cd "$(dirname "$0")/.."
steps=30
config=configs/tiny.yaml
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "bench-cpu: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
PY=/usr/bin/python3
M6=build/m6train

if [[ ! -x $M6 ]]; then
  echo "bench-cpu: building $M6"
  cmake -S . -B build -G Ninja -DM6_CUDA=OFF >/dev/null
  cmake --build build --target m6train
fi

scripts/build-corpus.sh "$M6" data/fortunes

tmp=$(mktemp -d "${TMPDIR:-/tmp}/m6_bench_cpu.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
sets=(--set "data.train=data/fortunes/train_*.bin" --set "data.val=data/fortunes/val_*.bin"
      --set "log.every=${LOG_EVERY:-5}")
[[ -n ${THREADS:-} ]] && sets+=(--set "train.threads=$THREADS")

echo "bench-cpu: m6train, $steps steps of $config"
"$M6" --config "$config" --run-dir "$tmp/run" --max-steps "$steps" "${sets[@]}" >"$tmp/m6.log" 2>&1 || {
  echo "bench-cpu: m6train failed:" >&2
  cat "$tmp/m6.log" >&2
  exit 1
}

# tokens/s of the train records after the first (warm-up).
m6_tps=$("$PY" - "$tmp/run/metrics.jsonl" <<'EOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tps = [r["tokens_per_s"] for r in recs if r.get("kind") == "train" and "tokens_per_s" in r]
if not tps:
    sys.exit(f"bench-cpu: no train record with tokens_per_s in {sys.argv[1]}")
if len(tps) == 1:
    print("bench-cpu: warning: one train record only, warm-up included", file=sys.stderr)
else:
    tps = tps[1:]
print(f"bench-cpu: m6train: mean of {len(tps)} train record(s): {sum(tps) / len(tps):.1f} tokens/s", file=sys.stderr)
print(sum(tps) / len(tps))
EOF
)

echo "bench-cpu: PyTorch reference model on the same config"
torch_args=(--config "$tmp/run/config.json" --steps "${TORCH_STEPS:-10}" --json)
[[ -n ${THREADS:-} ]] && torch_args+=(--threads "$THREADS")
torch_out=$("$PY" scripts/bench_torch.py "${torch_args[@]}")
echo "${torch_out%$'\n'*}"
torch_json=${torch_out##*$'\n'}

"$PY" - "$m6_tps" "$torch_json" <<'EOF'
import json, sys
m6 = float(sys.argv[1])
t = json.loads(sys.argv[2])
print()
print(f"{'':<24}{'tokens/s':>12}")
print(f"{'m6train':<24}{m6:>12.1f}")
print(f"{'PyTorch':<24}{t['tokens_per_s']:>12.1f}")
print(f"{'ratio m6train/PyTorch':<24}{m6 / t['tokens_per_s']:>12.2f}")
print(f"threads {t['threads']}  B {t['B']}  T {t['T']}  accumulation {t['accum']}")
EOF
