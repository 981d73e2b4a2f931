#!/usr/bin/env bash
# Faults on one rank of a multi-rank job (issue items 7 and 8), under mpirun
# with 4 ranks and ep = 2:
# - a stop signal delivered to one rank only (a failpoint, then a real
#   SIGUSR1 to a random rank from outside) stops every rank at the same step
#   boundary with one checkpoint and exit code 75; --resume auto continues to
#   weights byte-identical to the uninterrupted run's;
# - a non-finite loss or gradient on one rank skips the step on every rank.
source "$(dirname "$0")/ckpt_common.bash"
require_mpi 4

write_config "$tmp/f.yaml" 150 'checkpoint: {every: 50, keep: 2}'
job=("${MPIRUN[@]}" -np 4 "$M6TRAIN" --config "$tmp/f.yaml" --set parallel.ep=2)
"${job[@]}" --run-dir "$tmp/straight" > /dev/null
ref="$tmp/straight/checkpoints/step_00000150"

# 1. SIGTERM on rank 3 only, at the boundary after 17 steps.
M6_FAILPOINTS=signal@17@3 expect_rc 75 "${job[@]}" --run-dir "$tmp/one" \
  > "$tmp/one.log" 2>&1
test "$(cat "$tmp/one/checkpoints/latest")" = step_00000017
grep -q "stopped by SIGTERM at step 17" "$tmp/one.log"
"${job[@]}" --run-dir "$tmp/one" --resume auto > /dev/null
same_digests "$ref" "$tmp/one/checkpoints/step_00000150"
echo "ok: SIGTERM on rank 3 stopped all 4 ranks at step 17; resumed to identical weights"

# 2. A real SIGUSR1 to a random rank process at a random moment.
"${job[@]}" --run-dir "$tmp/ext" > "$tmp/ext.log" 2>&1 &
pid=$!
for _ in $(seq 300); do grep -q "^step " "$tmp/ext.log" 2> /dev/null && break; sleep 0.02; done
mapfile -t kids < <(pgrep -P "$pid" || true)
sleep "0.$((RANDOM % 5))"
[ "${#kids[@]}" -gt 0 ] && kill -USR1 "${kids[$((RANDOM % ${#kids[@]}))]}" 2> /dev/null || true
rc=0
wait "$pid" || rc=$?
if [ "$rc" = 75 ]; then
  grep -q "stopped by SIGUSR1 at step" "$tmp/ext.log"
  echo "ok: SIGUSR1 to one rank: $(grep -o "stopped by SIGUSR1 at step [0-9]*" "$tmp/ext.log"), latest $(cat "$tmp/ext/checkpoints/latest")"
else
  test "$rc" = 0
  echo "note: the job ended before SIGUSR1 arrived"
fi
"${job[@]}" --run-dir "$tmp/ext" --resume auto > /dev/null
same_digests "$ref" "$tmp/ext/checkpoints/step_00000150"

# 3. NaN gradient on rank 2 only (step 6) and NaN loss on rank 1 only (step 9).
M6_FAILPOINTS=nan_grad@5@2,nan_loss@8@1 "${job[@]}" --run-dir "$tmp/nan" \
  --set checkpoint.every=1 --set checkpoint.keep=100 --max-steps 10 > /dev/null 2>&1
ck="$tmp/nan/checkpoints"
same_digests "$ck/step_00000005" "$ck/step_00000006"
same_digests "$ck/step_00000008" "$ck/step_00000009"
$py - "$tmp/nan/metrics.jsonl" <<'PY'
import json, sys
skips = [r["step"] for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "skip"]
assert skips == [6, 9], skips
PY
echo "ok: a non-finite gradient or loss on one rank skipped the step on all"
