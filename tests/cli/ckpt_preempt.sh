#!/usr/bin/env bash
# Preemption (issue item 7): SIGTERM or SIGUSR1 stops the run at the next
# step boundary with a checkpoint and exit code 75; --resume auto continues
# to weights byte-identical to an uninterrupted run's. A second signal of any
# kind -- right after the first, or during the save -- is the same request:
# still exit 75 with the checkpoint committed, never the default action. The sbatch template asks Slurm for the warning
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

# 3. Real signals from outside at a random moment: one signal, then a second
#    one of any kind 0-50 ms later (Slurm's USR1 warning, then the TERM of the
#    job's end; a double Ctrl-C). The second is the same request: exit 75
#    with a committed checkpoint, never 143. The run is long (it cannot end
#    before the signals), so the exit code must be 75.
#    M6_PREEMPT_ROUNDS (default 5) rounds; 20 to check by hand.
write_config "$tmp/long.yaml" 1000000
rounds=${M6_PREEMPT_ROUNDS:-5}
pairs=("USR1 TERM" "TERM TERM" "INT INT" "TERM USR1" "USR1 INT")

# ms_delay: a delay drawn uniformly from 0-50 ms, as seconds for sleep.
ms_delay() { printf '0.%03d' $((RANDOM % 51)); }

# check_stop RUN LOG RC WHAT: exit 75, the console and the checkpoint agree
# on the step; prints the exit code and the step on failure.
check_stop() {
  local run=$1 log=$2 rc=$3 what=$4 step latest
  step=$(sed -n 's/.*stopped by SIG[A-Z0-9]* at step \([0-9]*\).*/\1/p' "$log" | tail -1)
  latest=$(cat "$run/checkpoints/latest" 2> /dev/null || echo none)
  if [ "$rc" != 75 ] || [ -z "$step" ] || [ "$latest" != "$(printf 'step_%08d' "$step")" ] ||
    [ "$(newest_valid "$run")" != "$run/checkpoints/$latest" ] ||
    ! grep -q '"kind":"preempted"' "$run/metrics.jsonl"; then
    echo "FAIL: $what: exit code $rc (want 75), stopped at step '${step:-none}'," \
      "latest '$latest', newest valid '$(newest_valid "$run")'; log tail:" >&2
    tail -5 "$log" >&2
    exit 1
  fi
  echo "$step"
}

# wait_step LOG: until training has logged a step.
wait_step() {
  local t0=$SECONDS
  while ((SECONDS - t0 < 120)); do grep -q "^step " "$1" 2> /dev/null && return 0; sleep 0.01; done
  echo "FAIL: no training step logged in $1" >&2
  exit 1
}

for ((i = 0; i < rounds; i++)); do
  read -r s1 s2 <<< "${pairs[$((i % ${#pairs[@]}))]}"
  run="$tmp/ext_$i"
  "$M6TRAIN" --config "$tmp/long.yaml" --run-dir "$run" > "$run.log" 2>&1 &
  pid=$!
  wait_step "$run.log"
  sleep "0.$((RANDOM % 10))"
  d=$(ms_delay)
  kill -s "$s1" "$pid"
  sleep "$d"
  kill -s "$s2" "$pid" 2> /dev/null || true  # it may have saved and exited already
  rc=0
  wait "$pid" || rc=$?
  step=$(check_stop "$run" "$run.log" "$rc" "SIG$s1, then SIG$s2 after ${d}s")
  echo "ok: SIG$s1 + SIG$s2 ${d}s later: exit 75, checkpoint of step $step"
  rm -rf "$run"
done

# 3b. The second signal during the checkpoint write: every save sleeps 1 s
#     after making its step_N.tmp/ (failpoint slow_save, only to widen the
#     window); the first signal starts the stop's save, the second is sent
#     0-50 ms after step_N.tmp/ appeared, while the run is inside the save.
write_config "$tmp/slow.yaml" 1000000
slow=$(seq -f 'slow_save@%g' 1 3000 | paste -sd,)
for ((i = 0; i < ${M6_PREEMPT_ROUNDS_SAVE:-2}; i++)); do
  read -r s1 s2 <<< "${pairs[$((i % ${#pairs[@]}))]}"
  run="$tmp/save_$i"
  M6_FAILPOINTS=$slow "$M6TRAIN" --config "$tmp/slow.yaml" --run-dir "$run" > "$run.log" 2>&1 &
  pid=$!
  wait_step "$run.log"
  sleep "0.$((RANDOM % 3))"
  kill -s "$s1" "$pid"
  t0=$SECONDS
  while ((SECONDS - t0 < 120)); do
    compgen -G "$run/checkpoints/step_*.tmp" > /dev/null && break
    sleep 0.005
  done
  tmpdir=$(compgen -G "$run/checkpoints/step_*.tmp" || echo "none after $((SECONDS - t0)) s")
  d=$(ms_delay)
  sleep "$d"
  inside=no
  [ -d "$tmpdir" ] && kill -0 "$pid" 2> /dev/null && inside=yes
  kill -s "$s2" "$pid"
  rc=0
  wait "$pid" || rc=$?
  if [ "$inside" != yes ]; then
    echo "FAIL: SIG$s2 was not sent during the save (step_N.tmp: $tmpdir); exit code $rc" >&2
    exit 1
  fi
  step=$(check_stop "$run" "$run.log" "$rc" "SIG$s1, then SIG$s2 during the save of ${tmpdir##*/}")
  test "$(printf 'step_%08d.tmp' "$step")" = "${tmpdir##*/}"
  echo "ok: SIG$s1, then SIG$s2 inside the save of step $step: exit 75, committed"
  rm -rf "$run"
done

# 3c. A stopped run resumes to the weights of an uninterrupted one.
"$M6TRAIN" --config "$tmp/p.yaml" --run-dir "$tmp/ext" > "$tmp/ext.log" 2>&1 &
pid=$!
wait_step "$tmp/ext.log"
kill -s USR1 "$pid"
sleep "$(ms_delay)"
kill -s TERM "$pid" 2> /dev/null || true
rc=0
wait "$pid" || rc=$?
if [ "$rc" = 75 ]; then
  step=$(check_stop "$tmp/ext" "$tmp/ext.log" "$rc" "SIGUSR1 + SIGTERM")
  echo "ok: SIGUSR1 + SIGTERM stopped the run at step $step"
else
  test "$rc" = 0 || { echo "FAIL: SIGUSR1 + SIGTERM: exit code $rc" >&2; exit 1; }
  echo "note: the run ended before SIGUSR1 arrived"
fi
finish "$tmp/ext"
echo "ok: resumed to identical weights"

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
