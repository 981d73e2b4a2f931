#!/usr/bin/env bash
# Communication benchmark of DP+EP (DESIGN.md section 4, principle 6: print,
# never assert speed):
#  1. for 2 and 4 ranks, the all-reduce and all-to-all bus bandwidth of the
#     Comm layer per message size, 1 KiB to 64 MiB (tests/bench/bench_comm.cpp,
#     nccl-tests' conventions: busbw = algbw * 2(n-1)/n for all-reduce,
#     algbw * (n-1)/n for all-to-all; a nonzero "wrong" column is a bug);
#  2. the tiny config's training throughput (tokens/s of the whole job) at 1, 2
#     and 4 ranks, weak scaling: micro_batch 16 per rank, global batch 16 x W,
#     ep = W (experts split over the ranks), nproc/W threads per rank, with
#     the share of time spent in collectives.
#
# With an fp32 payload, part 1 also times each collective as a plain blocking
# MPI call on the same buffers, side by side: the fastest single call of each
# ("best", "mpi best"; robust to other work on the machine) and their ratio
# "x", what the Comm layer's timeout watchdog costs.
#
# usage: scripts/bench-comm.sh [--steps N] [--min-bytes B] [--max-bytes B]
#                              [--wire f32|bf16|fp16] [--collectives-only]
#   --steps N      training steps per run (default 30; the first logged record is
#                  skipped as warm-up)
#   --min-bytes B  smallest message of part 1 (default 1024)
#   --max-bytes B  largest message of part 1 (default 67108864 = 64 MiB)
#   --collectives-only  part 1 only
#   --wire W       payload precision of part 1 and precision.comm of part 2
#                  (default f32)
# env: BUILD=dir   build directory (default build; configured with tests on,
#                  since bench_comm is built there)
#      NP="2 4"    rank counts of part 1
#      ROUNDS=3    alternating timing rounds of part 1 (best kept; more on a busy machine)
# On fewer cores than ranks the ranks share cores (mpirun --oversubscribe):
# the numbers then show the cost of communication, not a speed-up.
set -euo pipefail

cd "$(dirname "$0")/.."
steps=30
min_bytes=1024
max_bytes=$((64 << 20))
part2=1
wire=f32
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --min-bytes) min_bytes=$2; shift 2 ;;
    --max-bytes) max_bytes=$2; shift 2 ;;
    --collectives-only) part2=0; shift ;;
    --wire) wire=$2; shift 2 ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "bench-comm: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$wire" in f32) comm=fp32 ;; bf16) comm=bf16 ;; fp16) comm=fp16 ;;
  *) echo "bench-comm: --wire must be f32, bf16 or fp16" >&2; exit 2 ;; esac
BUILD=${BUILD:-build}
PY=/usr/bin/python3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
mpi=(mpirun --oversubscribe --bind-to none)

if [[ ! -x $BUILD/m6train || ! -x $BUILD/tests/bench_comm ]]; then
  echo "bench-comm: building m6train and bench_comm in $BUILD"
  [[ -f $BUILD/CMakeCache.txt ]] || cmake -S . -B "$BUILD" -G Ninja -DM6_TESTS=ON >/dev/null
  cmake --build "$BUILD" --target m6train bench_comm
fi

cores=$(nproc)
echo "bench-comm: $(uname -n), $cores cores, $(mpirun --version | head -1)"
echo
echo "=== 1. collectives (Comm over MPI, payload $wire)"
for np in ${NP:-2 4}; do
  "${mpi[@]}" -np "$np" "$BUILD/tests/bench_comm" --min-bytes "$min_bytes" --max-bytes "$max_bytes" \
    --wire "$wire" --rounds "${ROUNDS:-3}"
  echo
done

((part2)) || exit 0
echo "=== 2. training throughput, configs/tiny.yaml, $steps steps per run"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/m6_bench_comm.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if [[ -f data/fortunes/train_000000.bin ]]; then
  data=data/fortunes
else
  # The fortunes corpus of quickstart.sh is not built: licence texts will do.
  data=$tmp/data
  "$BUILD/m6train" data build --input README.md /usr/share/common-licenses/* --output "$data" \
    --val-fraction 0.1 >/dev/null
fi
for w in 1 2 4; do
  threads=$((cores / w > 0 ? cores / w : 1))
  args=(--config configs/tiny.yaml --run-dir "$tmp/run$w" --max-steps "$steps"
        --set "data.train=$data/train_*.bin" --set "data.val=$data/val_*.bin"
        --set train.micro_batch=16 --set train.global_batch=$((16 * w)) --set parallel.ep=$w
        --set train.threads=$threads --set log.every=5 --set eval.batches=1
        --set precision.comm=$comm)
  if ((w == 1)); then
    "$BUILD/m6train" "${args[@]}" >"$tmp/log$w" 2>&1
  else
    "${mpi[@]}" -np "$w" "$BUILD/m6train" "${args[@]}" >"$tmp/log$w" 2>&1
  fi || { echo "bench-comm: the $w-rank run failed:" >&2; tail -20 "$tmp/log$w" >&2; exit 1; }
done
$PY - "$tmp" "$cores" <<'PY'
import json, statistics, sys
tmp, cores = sys.argv[1], int(sys.argv[2])
print(f"{'ranks':>5} {'ep':>3} {'threads/rank':>12} {'tokens/s':>10} {'vs 1 rank':>9} "
      f"{'comm':>6} {'a2a MB/step':>11} {'allreduce MB/step':>17}")
base = None
for w in (1, 2, 4):
    recs = [json.loads(l) for l in open(f"{tmp}/run{w}/metrics.jsonl")]
    train = [r for r in recs if r["kind"] == "train"][1:]  # the first interval holds the warm-up
    comm = [r for r in recs if r["kind"] == "comm"][1:]
    tps = statistics.median(r["tokens_per_s"] for r in train)
    base = base or tps
    frac = statistics.median(r["comm_frac"] for r in comm) if comm else 0.0
    a2a = statistics.median(r["a2a_bytes_per_step"] for r in comm) / 1e6 if comm else 0.0
    ar = statistics.median(r["allreduce_bytes_per_step"] for r in comm) / 1e6 if comm else 0.0
    print(f"{w:>5} {w:>3} {max(1, cores // w):>12} {tps:>10.0f} {tps / base:>8.2f}x "
          f"{100 * frac:>5.1f}% {a2a:>11.2f} {ar:>17.2f}")
PY
