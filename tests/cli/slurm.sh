#!/usr/bin/env bash
# A real one-node Slurm cluster on localhost (Debian's munge, slurmctld and
# slurmd; everything -- key, config, state, logs -- in a temporary directory,
# nothing changed outside it) runs scripts/slurm/m6train.sbatch with 2 tasks
# on configs/tiny.yaml (shrunk by --set to a short run):
#   1. srun (--mpi=pmix: Debian's Open MPI is built with PMIx, not PMI2),
#      uninterrupted: the reference final loss;
#   2. srun, `scancel --signal=USR1` (the job's steps, as --signal=USR1@300);
#   3. srun, `scancel --batch --signal=USR1` (the batch shell, as
#      --signal=B:USR1@300; the template traps it and passes it on);
#   4. mpirun inside the batch script, `scancel --batch --signal=USR1`;
#   5. mpirun inside the batch script, `scancel --batch --signal=TERM` (a
#      preemption's SIGTERM): mpirun must end with exit 75 too.
# In 2-5 the job must save a checkpoint, exit 75, be requeued by the
# template, resume from that checkpoint (restart 1) and end with exactly the
# reference's final train and eval loss.
# If the daemons cannot start here (not root, packages missing, a container
# that forbids them), the test says why and exits 77: ctest reports it as
# skipped, never passed.
set -uo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
unset M6_FAILPOINTS SLURM_JOB_ID SLURM_JOBID
sbatch_file="$M6_SOURCE_DIR/scripts/slurm/m6train.sbatch"

skip() {
  echo "SKIP: Slurm cluster not available: $*"
  exit 77
}

for tool in munged munge unmunge slurmctld slurmd sbatch scontrol scancel sinfo squeue srun; do
  command -v "$tool" > /dev/null ||
    skip "'$tool' is not installed (scripts/setup.sh installs munge, slurmctld, slurmd, slurm-client)"
done
[[ $EUID -eq 0 ]] || skip "slurmd must run as root to start jobs; this test runs as uid $EUID"
M6TRAIN=$(readlink -f "$M6TRAIN")

tmp=$(mktemp -d /tmp/m6_slurm.XXXXXX)
chmod 755 "$tmp"
# The daemons run in the foreground of background jobs: their pids are known
# from the start, so cleanup ends exactly them.
pids=()
cleanup() {
  if ((${#pids[@]} > 1)); then
    scancel --quiet --user=root 2> /dev/null || true
    for _ in $(seq 50); do
      [[ -z $(squeue -h -o %i 2> /dev/null) ]] && break
      sleep 0.2
    done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2> /dev/null; done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do wait "${pids[i]}" 2> /dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# tail_logs: the daemons' last lines, for a skip or failure message.
tail_logs() {
  for f in "$tmp"/munge/munged.log "$tmp"/log/*.log; do
    [[ -f $f ]] && { echo "--- $f"; tail -n 15 "$f"; }
  done
}

# ---- munge: its own key and socket ------------------------------------------------
mkdir -p "$tmp/munge" "$tmp/munge-key" "$tmp/state" "$tmp/spool" "$tmp/log" "$tmp/work"
chmod 700 "$tmp/munge-key"
head -c 1024 /dev/urandom > "$tmp/munge-key/munge.key"
chmod 400 "$tmp/munge-key/munge.key"
sock="$tmp/munge/munge.sock"
munged -F --key-file="$tmp/munge-key/munge.key" --socket="$sock" \
  --pid-file="$tmp/munge/munged.pid" --log-file="$tmp/munge/munged.log" \
  --seed-file="$tmp/munge/seed" > "$tmp/munge/start.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [[ -S $sock ]] && break; sleep 0.1; done
munge -n -S "$sock" 2> /dev/null | unmunge -S "$sock" > /dev/null 2>&1 ||
  skip "munged did not start or cannot decode its own credential: $(cat "$tmp/munge/start.log") $(tail -n 5 "$tmp/munge/munged.log" 2> /dev/null)"

# ---- slurm.conf: one node with this machine's CPUs, ports that are free ------------
read -r ctld_port d_port < <(/usr/bin/python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
plugin_dir=$(dirname "$(find /usr/lib -name mpi_pmix.so -path '*slurm*' 2> /dev/null | head -n 1)")
[[ -f $plugin_dir/mpi_pmix.so ]] || skip "Slurm's PMIx plugin (mpi_pmix.so) is not installed"
cpus=$(nproc)
export SLURM_CONF="$tmp/slurm.conf"
cat > "$SLURM_CONF" << EOF
ClusterName=m6test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
PluginDir=$plugin_dir
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
TmpFS=$tmp/spool
# Job ids of their own: Slurm's PMIx plugin names /tmp/spmix_appdir_<uid>_<job>.<step>,
# which another cluster on this machine could be using for the same job id.
FirstJobId=$((100000 + RANDOM * 20))
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
# No cgroups: process tracking by parentage, no task containment.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=600
JobRequeue=1
NodeName=m6node NodeHostname=$(hostname) NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=m6 Nodes=m6node Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -i > "$tmp/log/slurmctld.start" 2>&1 &
pids+=($!)
slurmd -D -N m6node > "$tmp/log/slurmd.start" 2>&1 &
pids+=($!)
state=
for _ in $(seq 150); do
  for p in "${pids[@]}"; do
    kill -0 "$p" 2> /dev/null ||
      skip "a daemon exited at start: $(cat "$tmp"/log/*.start) $(tail_logs)"
  done
  state=$(sinfo -h -n m6node -o %T 2> /dev/null)
  [[ $state == idle ]] && break
  sleep 0.2
done
[[ $state == idle ]] || skip "the node did not become idle within 30 s (state '${state}'): $(tail_logs)"
echo "ok: slurmctld and slurmd up on localhost (ports $ctld_port, $d_port), node m6node with $cpus CPUs"

fail() {
  echo "FAIL: $*" >&2
  if [[ -n ${current:-} ]]; then
    echo "--- $tmp/work/$current.out (without step lines):" >&2
    grep -v '^step ' "$tmp/work/$current.out" >&2
    echo "--- events of $tmp/runs/$current/metrics.jsonl:" >&2
    grep -v '"kind":"train"' "$tmp/runs/$current/metrics.jsonl" >&2
    scontrol show job "${current_job:-0}" >&2
  fi
  tail_logs >&2
  exit 1
}

# ---- the run: configs/tiny.yaml, shrunk to a short run ----------------------------
"$M6TRAIN" data build --input "${M6_CORPUS[@]}" /usr/share/common-licenses/GPL-3 \
  --output "$tmp/data" --val-fraction 0.1 > /dev/null || fail "data build"
steps=60
extra="--set data.train=$tmp/data/train_000000.bin --set data.val=$tmp/data/val_000000.bin \
--set train.steps=$steps --set train.seq_len=32 --set train.micro_batch=2 --set train.global_batch=4 \
--set train.threads=1 --set log.every=1 --set eval.every=0 --set eval.batches=4"

# submit NAME LAUNCHER: prints the job id.
submit() {
  CONFIG="$M6_SOURCE_DIR/configs/tiny.yaml" RUN_DIR="$tmp/runs/$1" M6TRAIN="$M6TRAIN" M6MPIRUN="$M6_SOURCE_DIR/scripts/m6mpirun" \
    EXTRA="$extra" LAUNCHER=$2 sbatch --parsable --chdir="$tmp/work" --job-name="$1" \
    --nodes=1 --ntasks=2 --ntasks-per-node=2 --cpus-per-task=1 --mem=0 --time=10 \
    --gpus-per-task=0 --output="$tmp/work/$1.out" "$sbatch_file"
}
job_state() { scontrol show job "$1" 2> /dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
restarts() { scontrol show job "$1" 2> /dev/null | grep -o 'Restarts=[0-9]*' | cut -d= -f2; }

# wait_done JOB SECONDS [soft]: until the job is COMPLETED; a job that failed
# is a FAIL, or with "soft" returns 1.
# A requeued job is eligible again only after a delay that Slurm adds; the
# test releases it at once (scontrol update StartTime=now).
wait_done() {
  local s pending=0
  for _ in $(seq $(($2 * 5))); do
    s=$(job_state "$1")
    case $s in
      COMPLETED) return 0 ;;
      FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE)
        [[ ${3:-} == soft ]] && return 1
        echo "--- job $1 output:" >&2
        cat "$tmp/work/"*".out" >&2
        fail "job $1 ended $s" ;;
      PENDING)
        # Not in the second of the requeue (slurmd refuses a credential issued
        # in the same second as the revocation of the job's previous one), and
        # only once the node has finished cleaning up the previous run (a step
        # launched while it is still completing fails).
        if scontrol show job "$1" | grep -q 'Reason=BeginTime'; then
          pending=$((pending + 1))
          ((pending >= 15)) && [[ $(sinfo -h -n m6node -o %T) == idle ]] &&
            scontrol update jobid="$1" starttime=now 2> /dev/null
        fi ;;
      *) pending=0 ;;
    esac
    sleep 0.2
  done
  fail "job $1 not done after $2 s (state $s)"
}

# wait_step JOB NAME N: until the run has logged step N.
wait_step() {
  for _ in $(seq 600); do
    grep -q "^step $3/" "$tmp/work/$2.out" 2> /dev/null && return 0
    [[ $(job_state "$1") == COMPLETED ]] && fail "$2: the run ended before step $3 was logged"
    sleep 0.1
  done
  fail "$2: step $3 not logged within 60 s: $(tail -n 5 "$tmp/work/$2.out")"
}

# final NAME: "train-loss eval-loss" of the last step of the run.
final() {
  /usr/bin/python3 - "$tmp/runs/$1/metrics.jsonl" "$steps" << 'PY'
import json, sys
train = ev = None
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("step") == int(sys.argv[2]):
        if r["kind"] == "train": train = r["loss"]
        if r["kind"] == "eval": ev = r["eval_loss"]
print(repr(train), repr(ev))
PY
}

# 1. The reference: srun, no signal.
ref_job=$(submit ref srun) || fail "sbatch refused the template: $ref_job"
wait_done "$ref_job" 120
grep -q "done: $steps steps" "$tmp/work/ref.out" || fail "reference run: $(tail -n 5 "$tmp/work/ref.out")"
ref=$(final ref)
[[ $ref != *None* ]] || fail "reference run has no final losses ($ref)"
echo "ok: srun --mpi=pmix, 2 tasks: $steps steps, final train/eval loss $ref"

# preempt NAME LAUNCHER SCANCEL_ARGS...: submit, signal after step 10, then
# check the stop, the requeue, the resume and the final loss.
preempt() {
  local name=$1 launcher=$2
  shift 2
  local job out step
  job=$(submit "$name" "$launcher") || fail "$name: sbatch: $job"
  current=$name current_job=$job
  out="$tmp/work/$name.out"
  wait_step "$job" "$name" 10
  scancel "$@" "$job" || fail "$name: scancel $* $job"
  wait_done "$job" 150 soft
  local code
  code=$(grep -m1 -o 'm6train exited with code [0-9]*' "$out" | grep -o '[0-9]*$')
  if [[ -n $code ]] && ! grep -q "requeueing job $job" "$out"; then
    local why="$name: the first run exited $code, not 75, after 'scancel $*'"
    # Known gap: the ranks save and exit 75, but Open MPI's mpirun, itself
    # sent SIGTERM, kills the job and exits 1, so the job is not requeued.
    [[ $launcher == mpirun ]] && grep -q "stopped: step [0-9]* saved" "$out" &&
      why+=" -- KNOWN GAP: the ranks saved and exited 75, but mpirun ended with $code on SIGTERM"
    echo "--- $out:" >&2
    tail -n 20 "$out" >&2
    fail "$why"
  fi
  grep -q "requeueing job $job" "$out" || fail "$name: the job was not requeued: $(tail -n 8 "$out")"
  step=$(grep -m1 -o 'stopped: step [0-9]* saved' "$out" | grep -o '[0-9]\+')
  [[ -n $step ]] || fail "$name: no 'stopped: step N saved' line: $(tail -n 8 "$out")"
  ((step >= 10 && step < steps)) || fail "$name: stopped at step $step"
  grep -q "restart 1" "$out" || fail "$name: no restart 1 in $out"
  [[ $(restarts "$job") == 1 ]] || fail "$name: Slurm reports $(restarts "$job") restarts"
  grep -q "\"kind\":\"resume\".*\"step\":$step" "$tmp/runs/$name/metrics.jsonl" ||
    fail "$name: the requeued job did not resume from step $step"
  grep -q "done: $steps steps" "$out" || fail "$name: the requeued run did not finish"
  local got
  got=$(final "$name")
  [[ $got == "$ref" ]] || fail "$name: final train/eval loss $got, uninterrupted $ref"
  echo "ok: $launcher, scancel $*: saved step $step, exit 75, requeued, resumed, final loss $got"
}

preempt srun_usr1 srun --signal=USR1
preempt srun_batch_usr1 srun --batch --signal=USR1
preempt mpirun_batch_usr1 mpirun --batch --signal=USR1
preempt mpirun_batch_term mpirun --batch --signal=TERM
echo "ok: Slurm"
