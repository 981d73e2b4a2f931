#!/usr/bin/env bash
# Kill tests (issue item 9): KILL_RUNS runs (12), each killed with SIGKILL and
# resumed with --resume auto until done. Half are killed at an exact place --
# inside a save between its files and the manifest, between the manifest and
# the rename, between the rename and `latest`, between `latest` and pruning,
# or at a step boundary -- and half at a random moment from outside. Every
# resume must start from the newest checkpoint that verifies (never a partial
# one: checked independently of m6train before each resume), and every run
# must end byte-identical to an uninterrupted run. KILL_SEED reproduces a
# failing sequence.
#
# Under mpirun the same test kills a random rank of a 4-rank job with ep = 2:
# KILL_RANKS=4 (tests/cli/kill_random_mpi.sh). KILL_STEPS sets the run length
# (48; a checkpoint every 3 steps).
source "$(dirname "$0")/ckpt_common.bash"

ranks=${KILL_RANKS:-1}
runs=${KILL_RUNS:-12}
steps=${KILL_STEPS:-48}
final=$(printf 'step_%08d' "$steps")
seed=${KILL_SEED:-$(( $(date +%s) % 100000 ))}
RANDOM=$seed
echo "kill_random: seed $seed, $ranks rank(s)"

launch=("$M6TRAIN")
layout=()
if [ "$ranks" -gt 1 ]; then
  require_mpi "$ranks"
  launch=("${MPIRUN[@]}" -np "$ranks" "$M6TRAIN")
  layout=(--set parallel.ep=2)
fi
write_config "$tmp/k.yaml" "$steps" 'checkpoint: {every: 3, keep: 2}'
"${launch[@]}" --config "$tmp/k.yaml" --run-dir "$tmp/ref" "${layout[@]}" > /dev/null
ref="$tmp/ref/checkpoints/$final"

# kill_one PID: SIGKILL to the training process, or to a random rank of the
# job (never to mpirun itself: its ranks would live on unsupervised).
kill_one() {
  if [ "$ranks" = 1 ]; then
    kill -9 "$1" 2> /dev/null || true
    return
  fi
  local kids
  mapfile -t kids < <(pgrep -P "$1" || true)
  [ "${#kids[@]}" -gt 0 ] && kill -9 "${kids[$((RANDOM % ${#kids[@]}))]}" 2> /dev/null || true
}

# wait_started PID: until the ranks exist (mpirun) -- the random delay counts from there.
wait_started() {
  [ "$ranks" = 1 ] && return
  for _ in $(seq 250); do
    [ "$(pgrep -c -P "$1" || true)" -ge "$ranks" ] && return
    sleep 0.02
  done
}

points=(kill_save_files kill_save_manifest kill_save_rename kill_save_latest kill_save_files kill_step)
killed_in_save=0
for i in $(seq "$runs"); do
  run="$tmp/run$i"
  failpoints=""
  if [ "$i" -le $((runs / 2)) ]; then
    p=${points[$(( (i - 1) % ${#points[@]} ))]}
    step=$(( (RANDOM % (steps / 3 - 2) + 1) * 3 ))  # a step with a periodic save
    failpoints="$p@$step"
    # Files and step boundaries happen on every rank: pick one. The commit
    # (manifest, rename, latest) is rank 0's alone.
    case $p in kill_save_files | kill_step) [ "$ranks" -gt 1 ] && failpoints="$p@$step@$((RANDOM % ranks))" ;; esac
  fi
  # Attempt 1 is killed (unless a random kill comes after the end); attempt 2
  # resumes with --resume auto and must finish.
  for attempt in 1 2; do
    expect=$(newest_valid "$run")
    log="$run.$attempt.log"
    M6_FAILPOINTS=$([ "$attempt" = 1 ] && echo "$failpoints") \
      "${launch[@]}" --config "$tmp/k.yaml" --run-dir "$run" --resume auto "${layout[@]}" \
      > "$log" 2>&1 &
    pid=$!
    if [ "$attempt" = 1 ] && [ -z "$failpoints" ]; then
      wait_started "$pid"
      sleep "0.$((RANDOM % 9))$((RANDOM % 10))"
      kill_one "$pid"
    fi
    rc=0
    wait "$pid" 2> /dev/null || rc=$?
    if grep -q "is unusable" "$log"; then
      echo "FAIL: run $i attempt $attempt found a damaged committed checkpoint:" >&2
      grep "is unusable" "$log" >&2
      exit 1
    fi
    if [ "$attempt" = 2 ] && [ "$expect" != fresh ] && [ "$(last_resume "$run")" != "$expect" ]; then
      echo "FAIL: run $i resumed from $(last_resume "$run"), expected $expect" >&2
      exit 1
    fi
    [ "$rc" = 0 ] && break
    if [ "$attempt" = 2 ] || { [ "$rc" != 137 ] && [ "$ranks" = 1 ]; }; then
      echo "FAIL: run $i attempt $attempt exited $rc:" >&2
      tail -5 "$log" >&2
      exit 1
    fi
    case $failpoints in kill_save*) killed_in_save=$((killed_in_save + 1)) ;; esac
    # A random kill that left an uncommitted step_N.tmp landed inside a save.
    if [ -z "$failpoints" ] && compgen -G "$run/checkpoints/step_*.tmp" > /dev/null; then
      killed_in_save=$((killed_in_save + 1))
      echo "   run $i: the random kill landed inside a save"
    fi
    echo "   run $i: killed (exit $rc), newest verified checkpoint: $(basename "$(newest_valid "$run")")"
  done
  same_digests "$ref" "$run/checkpoints/$final"
  echo "ok: run $i (${failpoints:-random kill}) resumed to identical final weights"
done
[ "$killed_in_save" -ge 4 ] || { echo "FAIL: only $killed_in_save kills during a save" >&2; exit 1; }
echo "ok: $runs killed runs resumed to identical weights ($killed_in_save killed inside a save)"
