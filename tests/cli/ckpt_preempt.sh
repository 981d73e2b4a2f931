#!/usr/bin/env bash
# Preemption (issue item 7): SIGTERM or SIGUSR1 stops the run at the next
# step boundary with a checkpoint and exit code 75; --resume auto continues
# to weights byte-identical to an uninterrupted run's. A second signal during
# the save corrupts nothing. The sbatch template asks Slurm for the warning
# signal and a requeue, and resumes with --resume auto.
source "$(dirname "$0")/ckpt_common.bash"

write_config "$tmp/p.yaml" 120 'checkpoint: {every: 50, keep: 2}'
"$M6TRAIN" --config "$tmp/p.yaml" --run-dir "$tmp/straight" > /dev/null
ref="$tmp/straight/checkpoints/step_00000120"

# finish RUN: resumes until done; the final checkpoint must equal the reference.
finish() {
  "$M6TRAIN" --config "$tmp/p.yaml" --run-dir "$1" --resume auto > "$1.resume.log"
  same_digests "$ref" "$1/checkpoints/step_00000120"
}

# 1. A signal raised at an exact step boundary (failpoint): the checkpoint is
#    that step, `latest` names it, the console says how to resume.
M6_FAILPOINTS=signal@33 expect_rc 75 "$M6TRAIN" --config "$tmp/p.yaml" --run-dir "$tmp/fp" \
  > "$tmp/fp.log"
grep -q "stopped by SIGTERM at step 33" "$tmp/fp.log"
test "$(cat "$tmp/fp/checkpoints/latest")" = step_00000033
grep -q '"kind":"preempted"' "$tmp/fp/metrics.jsonl"
finish "$tmp/fp"
echo "ok: signal at step 33 -> exit 75, resumed to identical weights"

# 2. A second signal while the checkpoint is being written.
M6_FAILPOINTS=signal@40,signal_save@40 expect_rc 75 "$M6TRAIN" --config "$tmp/p.yaml" \
  --run-dir "$tmp/twice" > /dev/null
test "$(newest_valid "$tmp/twice")" = "$tmp/twice/checkpoints/step_00000040"
finish "$tmp/twice"
echo "ok: second signal during the save"

# 3. Real signals from outside at a random moment: SIGTERM, SIGUSR1, and
#    SIGUSR1 followed by SIGTERM (Slurm's warning, then the kill's TERM).
for sigs in TERM USR1 "USR1 TERM"; do
  run="$tmp/ext_${sigs// /_}"
  "$M6TRAIN" --config "$tmp/p.yaml" --run-dir "$run" > "$run.log" 2>&1 &
  pid=$!
  # Wait for training to start (the first step logged), then a random delay.
  for _ in $(seq 200); do grep -q "^step " "$run.log" 2> /dev/null && break; sleep 0.02; done
  sleep "0.$((RANDOM % 3))$((RANDOM % 10))"
  for s in $sigs; do kill -s "$s" "$pid" 2> /dev/null || true; sleep 0.01; done
  rc=0
  wait "$pid" || rc=$?
  if [ "$rc" = 75 ]; then
    grep -q "resume with --resume auto" "$run.log"
    step=$(sed 's/^step_0*//' "$run/checkpoints/latest")
    echo "ok: SIG${sigs// /+SIG} stopped the run at step $step"
  else
    # The run finished before the signal landed: nothing to check but the result.
    test "$rc" = 0
    echo "note: the run ended before SIG$sigs arrived"
  fi
  finish "$run"
done

# 4. The Slurm template requeues on the warning signal and resumes.
sbatch="$M6_SOURCE_DIR/scripts/slurm/m6train.sbatch"
if [ -f "$sbatch" ]; then
  grep -q -- "--signal=USR1@300" "$sbatch"
  grep -q -- "--requeue" "$sbatch"
  grep -q -- "--resume auto" "$sbatch"
  echo "ok: $sbatch has --signal=USR1@300, --requeue and --resume auto"
else
  echo "note: $sbatch does not exist yet"
fi
echo "ok: preemption"
