#!/usr/bin/env bash
# Preemption of a 2-rank job under mpirun, the signals sent to the launcher
# (scripts/m6mpirun, the wrapper the Slurm template uses with
# LAUNCHER=mpirun): a stop signal, then a second one of any kind 0-50 ms
# later, ends the job with exit code 75 and a committed checkpoint of both
# ranks -- also when the second arrives during the checkpoint write, and when
# mpirun and the ranks get SIGTERM themselves as well (Slurm signals every
# process of the job). On failure the test prints the exit code and the step.
# M6_PREEMPT_MPI_ROUNDS rounds (default 2; 20 to check by hand).
source "$(dirname "$0")/ckpt_common.bash"
require_mpi 2
wrap=(env M6_EXIT_STATUS_DIR="$tmp" "$M6_SOURCE_DIR/scripts/m6mpirun" --oversubscribe
  --bind-to none -x OMP_WAIT_POLICY -x OMP_NUM_THREADS -np 2)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null || true; done; rm -rf "$tmp"' EXIT

write_config "$tmp/long.yaml" 1000000 'checkpoint: {every: 0}'
# No SIGINT: bash starts a background job of a script with SIGINT ignored,
# and a trap cannot undo that, so the launcher started with & here (as in the
# Slurm template, which relays SIGINT itself) never sees one.
pairs=("USR1 TERM" "TERM TERM" "TERM USR1" "USR1 USR1")
ms_delay() { printf '0.%03d' $((RANDOM % 51)); }

# check_stop RUN LOG RC WHAT [nolog]: exit 75; the console, `latest` and a
# valid 2-rank checkpoint agree on the step (nolog: mpirun tearing the job
# down no longer forwards the ranks' output; the step is then `latest`'s).
check_stop() {
  local run=$1 log=$2 rc=$3 what=$4 step latest world
  step=$(sed -n 's/.*stopped by SIG[A-Z0-9]* at step \([0-9]*\).*/\1/p' "$log" | tail -1)
  latest=$(cat "$run/checkpoints/latest" 2> /dev/null || echo none)
  [ "${5:-}" = nolog ] && [ -z "$step" ] && [ "$latest" != none ] && step=$((10#${latest#step_}))
  world=$($py -c "import json,sys; print(json.load(open(sys.argv[1]))['layout']['world'])" \
    "$run/checkpoints/$latest/manifest.json" 2> /dev/null || echo none)
  if [ "$rc" != 75 ] || [ -z "$step" ] || [ "$latest" != "$(printf 'step_%08d' "$step")" ] ||
    [ "$(newest_valid "$run")" != "$run/checkpoints/$latest" ] || [ "$world" != 2 ]; then
    echo "FAIL: $what: exit code $rc (want 75), stopped at step '${step:-none}'," \
      "latest '$latest' (world $world), newest valid '$(newest_valid "$run")'; log tail:" >&2
    tail -8 "$log" >&2
    exit 1
  fi
  echo "$step"
}

# start RUN [M6_FAILPOINTS]: the job in the background; pid = the launcher's.
start() {
  M6_FAILPOINTS=${2:-} "${wrap[@]}" "$M6TRAIN" --config "$tmp/long.yaml" --run-dir "$1" \
    > "$1.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  local t0=$SECONDS
  while ((SECONDS - t0 < 120)); do grep -q "step " "$1.log" 2> /dev/null && break; sleep 0.02; done
  grep -q "step " "$1.log" || { echo "FAIL: no training step logged in $1.log" >&2; tail "$1.log"; exit 1; }
}

# job_pids: mpirun_pid and ranks, the launcher's mpirun and its 2 ranks
# (also killed on exit).
job_pids() {
  mapfile -t mpirun_pid < <(pgrep -P "$pid")
  mapfile -t ranks < <(for m in "${mpirun_pid[@]}"; do pgrep -P "$m"; done)
  ((${#mpirun_pid[@]} == 1 && ${#ranks[@]} == 2)) ||
    { echo "FAIL: expected mpirun and 2 ranks, found ${mpirun_pid[*]:-none} / ${ranks[*]:-none}" >&2; exit 1; }
  pids+=("${mpirun_pid[@]}" "${ranks[@]}")
}

rounds=${M6_PREEMPT_MPI_ROUNDS:-2}
# 1. Two signals to the launcher, 0-50 ms apart.
for ((i = 0; i < rounds; i++)); do
  read -r s1 s2 <<< "${pairs[$((i % ${#pairs[@]}))]}"
  run="$tmp/two_$i"
  start "$run"
  sleep "0.$((RANDOM % 10))"
  d=$(ms_delay)
  kill -s "$s1" "$pid"
  sleep "$d"
  kill -s "$s2" "$pid" 2> /dev/null || true
  rc=0
  wait "$pid" || rc=$?
  step=$(check_stop "$run" "$run.log" "$rc" "2 ranks: SIG$s1, then SIG$s2 after ${d}s")
  echo "ok: 2 ranks, SIG$s1 + SIG$s2 ${d}s later to the launcher: exit 75, step $step"
  rm -rf "$run"
done

# 2. The second signal during the checkpoint write (slow_save widens it to 1 s).
slow=$(seq -f 'slow_save@%g' 1 3000 | paste -sd,)
for ((i = 0; i < rounds; i++)); do
  read -r s1 s2 <<< "${pairs[$((i % ${#pairs[@]}))]}"
  run="$tmp/save_$i"
  start "$run" "$slow"
  kill -s "$s1" "$pid"
  t0=$SECONDS
  while ((SECONDS - t0 < 120)); do
    compgen -G "$run/checkpoints/step_*.tmp" > /dev/null && break
    sleep 0.005
  done
  tmpdir=$(compgen -G "$run/checkpoints/step_*.tmp" || echo "none after $((SECONDS - t0)) s")
  sleep "$(ms_delay)"
  inside=no
  [ -d "$tmpdir" ] && kill -0 "$pid" 2> /dev/null && inside=yes
  kill -s "$s2" "$pid"
  rc=0
  wait "$pid" || rc=$?
  [ "$inside" = yes ] || { echo "FAIL: SIG$s2 was not sent during the save ($tmpdir); exit code $rc" >&2; exit 1; }
  step=$(check_stop "$run" "$run.log" "$rc" "2 ranks: SIG$s1, then SIG$s2 during the save of ${tmpdir##*/}")
  test "$(printf 'step_%08d.tmp' "$step")" = "${tmpdir##*/}"
  echo "ok: 2 ranks, SIG$s1, then SIG$s2 inside the save of step $step: exit 75, committed"
  rm -rf "$run"
done

# 3. Slurm's way: SIGTERM to every process of the job at once (the launcher,
#    mpirun, both ranks), then again 0-50 ms later to the launcher and the
#    ranks, with the save slowed by 1 s (slow_save): M6_STOP_GRACE_S=3 gives
#    the ranks 2 x 3 s before mpirun's SIGKILL (Open MPI's default, 1 s per
#    stage, would kill this save). mpirun exits 1 after its teardown; the
#    launcher still says 75. Not mpirun a second time: a second SIGTERM to
#    mpirun while it aborts makes Open MPI 4.1 kill the ranks at once
#    ("forcibly terminate"), whatever the grace (README, Preemption).
run="$tmp/all"
wrap=(env M6_STOP_GRACE_S=3 "${wrap[@]:1}")
start "$run" "$slow"
sleep "0.$((RANDOM % 10))"
job_pids
kill -TERM "$pid" "${mpirun_pid[@]}" "${ranks[@]}"
sleep "$(ms_delay)"
kill -TERM "$pid" "${ranks[@]}" 2> /dev/null || true
rc=0
wait "$pid" || rc=$?
step=$(check_stop "$run" "$run.log" "$rc" "2 ranks: SIGTERM to every process" nolog)
echo "ok: 2 ranks, SIGTERM to the launcher, mpirun and the ranks (a 1 s save): exit 75, step $step"

# 3b. The limit the README states: a second SIGTERM to mpirun itself while it
#     aborts kills the ranks at once, inside their 1 s save. The launcher
#     then exits with mpirun's code (1), naming what the ranks recorded.
run="$tmp/twice"
start "$run" "$slow"
job_pids
kill -TERM "$pid" "${mpirun_pid[@]}" "${ranks[@]}"
sleep "$(ms_delay)"
kill -TERM "$pid" "${mpirun_pid[@]}" "${ranks[@]}" 2> /dev/null || true
rc=0
wait "$pid" || rc=$?
if [ "$rc" = 75 ] || [ -e "$run/checkpoints/latest" ] ||
  ! grep -q "m6mpirun: stop requested (SIGTERM) but 0 of [0-9]* rank(s) recorded exit 75" "$run.log"; then
  echo "FAIL: SIGTERM twice to mpirun during a 1 s save: exit code $rc (want mpirun's 1)," \
    "latest '$(cat "$run/checkpoints/latest" 2> /dev/null || echo none)' (want none); log tail:" >&2
  tail -5 "$run.log" >&2
  exit 1
fi
echo "ok: SIGTERM twice to mpirun kills the save (the documented limit): exit $rc, the launcher says why"

# 4. Plain mpirun forwards SIGUSR1 to the ranks and exits 75 with them.
run="$tmp/plain"
"${MPIRUN[@]}" -np 2 "$M6TRAIN" --config "$tmp/long.yaml" --run-dir "$run" > "$run.log" 2>&1 &
pid=$!
pids+=("$pid")
t0=$SECONDS
while ((SECONDS - t0 < 120)); do grep -q "step " "$run.log" 2> /dev/null && break; sleep 0.02; done
sleep 1  # mpirun's handler is installed by now
kill -USR1 "$pid"
rc=0
wait "$pid" || rc=$?
step=$(check_stop "$run" "$run.log" "$rc" "2 ranks: SIGUSR1 to plain mpirun")
echo "ok: 2 ranks, SIGUSR1 to plain mpirun: exit 75, step $step"
echo "ok: preemption under mpirun"
