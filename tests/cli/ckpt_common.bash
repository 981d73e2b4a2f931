# Shared by tests/cli/ckpt_*.sh and kill_*.sh (sourced; not a test itself:
# CTest runs only *.sh). A tiny corpus and config, and the comparisons the
# checkpoint tests make: per-step losses and the digests of a checkpoint's
# tensor files.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset M6_FAILPOINTS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3
MPIRUN=(mpirun --oversubscribe --allow-run-as-root -x OMP_WAIT_POLICY -x OMP_NUM_THREADS)

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" /usr/share/common-licenses/GPL-3 \
  --output "$tmp/data" --val-fraction 0.1 > /dev/null

# write_config FILE STEPS [EXTRA_YAML] [TRAIN_KEYS]: a 2-layer MoE (4 experts,
# top-2), one thread, a loss logged every step, no periodic evaluation;
# TRAIN_KEYS are added to the train: section ("spike_guard: {window: 8}").
write_config() {
  cat > "$1" <<YAML
model:
  vocab_size: 256
  max_seq_len: 32
  d_model: 32
  n_heads: 2
  n_layers: 2
  d_ff: 64
  moe: {every: 2, experts: 4, top_k: 2, capacity_factor: 1.0}
data:
  train: $tmp/data/train_*.bin
  val: $tmp/data/val_*.bin
train: {steps: $2, seq_len: 32, micro_batch: 2, global_batch: 8, threads: 1${4:+, $4}}
optim: {lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5}
eval: {every: 0, batches: 2}
log: {every: 1}
${3:-}
YAML
}

# expect_rc WANT CMD...: runs CMD, fails the test unless it exits with WANT.
expect_rc() {
  local want=$1
  shift
  local rc=0
  "$@" || rc=$?
  if [ "$rc" != "$want" ]; then
    echo "FAIL: expected exit code $want, got $rc: $*" >&2
    exit 1
  fi
}

# losses RUN_DIR: "step loss" per line, the last record of each step (a
# resumed run appends to metrics.jsonl).
losses() {
  $py - "$1" <<'PY'
import json, sys
out = {}
for line in open(sys.argv[1] + "/metrics.jsonl"):
    r = json.loads(line)
    if r["kind"] == "train":
        out[r["step"]] = r["loss"]
for s in sorted(out):
    print(s, repr(out[s]))
PY
}

# digests CKPT_DIR: "file sha256" of every tensor file its manifest lists,
# after checking each file against it.
digests() {
  $py - "$1" <<'PY'
import hashlib, json, sys
d = sys.argv[1]
m = json.load(open(d + "/manifest.json"))
for name in sorted(m["files"]):
    h = hashlib.sha256(open(d + "/" + name, "rb").read()).hexdigest()
    assert h == m["files"][name]["sha256"], f"{d}/{name}: digest differs from the manifest"
    print(name, h)
PY
}

# same_digests A B: the tensor files of two checkpoints are byte-identical.
same_digests() {
  if ! diff <(digests "$1") <(digests "$2"); then
    echo "FAIL: $1 and $2 differ" >&2
    exit 1
  fi
}

# newest_valid RUN_DIR: the committed checkpoint --resume auto must pick (the
# newest step_N whose manifest and files verify), or "fresh".
newest_valid() {
  $py - "$1" <<'PY'
import hashlib, json, os, re, sys
root = sys.argv[1] + "/checkpoints"
steps = sorted((int(n[5:]), n) for n in (os.listdir(root) if os.path.isdir(root) else [])
               if re.fullmatch(r"step_[0-9]+", n))
for _, name in reversed(steps):
    d = os.path.join(root, name)
    try:
        m = json.load(open(d + "/manifest.json"))
        ok = all(hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest() == i["sha256"]
                 for f, i in m["files"].items())
        ok = ok and sorted(os.listdir(d)) == sorted(list(m["files"]) + ["manifest.json"])
    except Exception:
        ok = False
    if ok:
        print(d)
        break
else:
    print("fresh")
PY
}

# last_resume RUN_DIR: the checkpoint named by the newest "resume" record of
# metrics.jsonl, or "fresh".
last_resume() {
  $py - "$1" <<'PY'
import json, sys
last = "fresh"
for line in open(sys.argv[1] + "/metrics.jsonl"):
    r = json.loads(line)
    if r["kind"] == "resume":
        last = r["checkpoint"]
print(last)
PY
}

# mpi_world N: whether this m6train runs as one job of N ranks under mpirun
# (the manifest of a 0-step run records the world size that wrote it).
mpi_world() {
  local n=$1 probe="$tmp/mpi_probe_$1"
  write_config "$tmp/probe.yaml" 1
  "${MPIRUN[@]}" -np "$n" "$M6TRAIN" --config "$tmp/probe.yaml" --run-dir "$probe" \
    --max-steps 0 > /dev/null 2>&1 || true
  [ -f "$probe/checkpoints/step_00000000/manifest.json" ] &&
    $py -c "import json,sys; sys.exit(json.load(open('$probe/checkpoints/step_00000000/manifest.json'))['layout']['world'] != $n)"
}

# require_mpi N: the multi-rank tests need m6train to run as one job of N
# ranks under mpirun (MPI is a required dependency of the build).
require_mpi() {
  if ! mpi_world "$1"; then
    echo "FAIL: this m6train does not run as $1 ranks under mpirun (see $tmp/mpi_probe_$1)" >&2
    exit 1
  fi
}
