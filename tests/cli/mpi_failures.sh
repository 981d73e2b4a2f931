#!/usr/bin/env bash
# No silent hangs and clear failures in multi-rank jobs (mpirun --oversubscribe):
#  1. a config that does not fit the world size fails with exit 2 before
#     anything is allocated, and every rank says why, tagged with its rank;
#  2. a rank that stops making progress (SIGSTOP) ends the job: the others
#     time out after parallel.timeout_s naming the step and the collective,
#     the job exits non-zero, and no process is left behind;
#  3. a rank that dies (SIGKILL at step 5, by failpoint) ends the job quickly
#     with a non-zero exit, and no process is left behind.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
tmp=$(mktemp -d)
pids=()
cleanup() {
  # Only the processes this test started, by pid.
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
mpi=(mpirun --oversubscribe --bind-to none)

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" /usr/share/common-licenses/GPL-3 \
  --output "$tmp/data" --val-fraction 0.1 > /dev/null
cat > "$tmp/c.yaml" <<YAML
model: {vocab_size: 256, max_seq_len: 16, d_model: 32, n_heads: 2, n_layers: 2, d_ff: 64,
        moe: {every: 1, experts: 4, top_k: 2}}
data: {train: $tmp/data/train_*.bin, val: $tmp/data/val_*.bin}
train: {steps: 1000000, seq_len: 16, micro_batch: 2, global_batch: 8, threads: 1, device: cpu}
eval: {every: 0, batches: 2}
log: {every: 20}
parallel: {ep: 2, timeout_s: 3}
YAML

fail() { echo "FAILED: $*"; for f in "$tmp"/*.err; do echo "--- $f"; tail -20 "$f"; done; exit 1; }

# Waits up to $2 seconds for every pid in $1 (space-separated) to be gone.
all_gone() {
  local t=0
  while ((t < $2 * 10)); do
    local alive=0
    for p in $1; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive == 0)) && return 0
    sleep 0.1
    t=$((t + 1))
  done
  return 1
}

# ---- 1. config error on every rank -----------------------------------------------
rc=0
"${mpi[@]}" -np 2 "$M6TRAIN" --config "$tmp/c.yaml" --run-dir "$tmp/r1" --set parallel.ep=4 \
  > "$tmp/cfg.out" 2> "$tmp/cfg.err" || rc=$?
((rc == 2)) || fail "ep 4 on 2 ranks: exit $rc, want 2"
for r in 0 1; do
  grep -q "\[rank $r/2\] error: .*parallel.ep: ep (4) must divide the world size (2)" "$tmp/cfg.err" ||
    fail "rank $r did not report the config error"
done
[[ ! -e "$tmp/r1/checkpoints" ]] || fail "a checkpoint directory was created"
echo "ok: config error, exit 2 on every rank"

# Starts a 4-rank training in the background; sets job (mpirun's pid) and ranks.
start_job() {
  "${mpi[@]}" -np 4 "$M6TRAIN" --config "$tmp/c.yaml" --run-dir "$tmp/$1" > "$tmp/$1.out" \
    2> "$tmp/$1.err" &
  job=$!
  pids+=("$job")
}
# Waits until the run has logged a training step (so every rank is in the loop).
wait_training() {
  local t=0
  until grep -q '"kind":"train"' "$tmp/$1/metrics.jsonl" 2>/dev/null; do
    sleep 0.2
    t=$((t + 1))
    ((t < 300)) || fail "$1: no training step logged in 60 s"
  done
  ranks=$(pgrep -P "$job" || true)
  [[ $(echo "$ranks" | wc -w) -eq 4 ]] || fail "$1: expected 4 rank processes, found: $ranks"
  pids+=($ranks)
}

# ---- 2. a stopped rank: every rank exits within the timeout ------------------------
start_job stop
wait_training stop
victim=$(echo "$ranks" | sed -n 2p)
kill -STOP "$victim"
t0=$(date +%s)
rc=0
wait "$job" || rc=$?
elapsed=$(($(date +%s) - t0))
((rc != 0)) || fail "the job with a stopped rank exited 0"
((elapsed <= 3 + 30)) || fail "the job took ${elapsed}s to end after the stop (timeout_s 3)"
all_gone "$ranks" 15 || fail "processes left behind after the timeout: $ranks"
grep -Eq "\[rank [0-9]/4\] error: step [0-9]+: timed out after [0-9.]+ s waiting in (all_to_all_v|all_reduce)" \
  "$tmp/stop.err" || fail "no timeout message naming the step and the collective"
grep -Eq "waiting in [a-z_]+ \((layer [0-9]+ |dense grads|grad norm|metrics|eval loss|stop signal|step loss|skip decision)" "$tmp/stop.err" ||
  fail "the timeout message does not say what the collective was for"
echo "ok: stopped rank, job ended after ${elapsed}s with exit $rc: $(grep -m1 'timed out' "$tmp/stop.err")"

# ---- 3. a dead rank: the job ends quickly ------------------------------------------
export M6_FAILPOINTS="kill_step@5@1"
start_job kill
t0=$(date +%s)
rc=0
wait "$job" || rc=$?
elapsed=$(($(date +%s) - t0))
unset M6_FAILPOINTS
((rc != 0)) || fail "the job with a killed rank exited 0"
((elapsed <= 60)) || fail "the job took ${elapsed}s to end after a rank died"
all_gone "$(pgrep -f "$tmp/kill" || true)" 15 || fail "processes left behind after a rank died"
echo "ok: killed rank, job ended in ${elapsed}s with exit $rc"
