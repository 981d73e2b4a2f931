#!/usr/bin/env bash
# train.device across ranks (core/train/device_plan.h), on a machine without a
# GPU: `train.device: cuda` in a 2-rank job is a config error (exit 2) that
# every rank reports, tagged with its rank, before the run directory or any
# buffer exists; `auto` trains on the CPU. (The GPU side -- one rank per GPU,
# more ranks than GPUs -- is covered by tests/unit/train/test_device_plan.cpp
# and, on a GPU machine, scripts/gpu-check.sh.)
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
if command -v nvidia-smi > /dev/null && nvidia-smi -L 2> /dev/null | grep -q GPU; then
  echo "device_mpi: this machine has a GPU; the no-GPU checks do not apply"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mpi=(mpirun --oversubscribe --bind-to none -np 2)
fail() { echo "FAILED: $*"; tail -20 "$tmp"/*.err; exit 1; }

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" --output "$tmp/data" --val-fraction 0.1 \
  > /dev/null
cat > "$tmp/c.yaml" <<YAML
model: {vocab_size: 256, max_seq_len: 16, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32}
data: {train: $tmp/data/train_*.bin, val: $tmp/data/val_*.bin}
train: {steps: 2, seq_len: 16, micro_batch: 2, global_batch: 4, threads: 1}
eval: {every: 0, batches: 1}
YAML

rc=0
"${mpi[@]}" "$M6TRAIN" --config "$tmp/c.yaml" --run-dir "$tmp/r1" --set train.device=cuda \
  > "$tmp/cuda.out" 2> "$tmp/cuda.err" || rc=$?
((rc == 2)) || fail "train.device=cuda without a GPU on 2 ranks: exit $rc, want 2"
for r in 0 1; do
  grep -q "\[rank $r/2\] error: .*train.device: cuda was asked for, but .*train.device: cpu" \
    "$tmp/cuda.err" || fail "rank $r did not report the device error"
done
[[ ! -e "$tmp/r1" ]] || fail "the run directory was created before the device check"
echo "ok: train.device=cuda without a GPU: exit 2 on every rank, nothing created"

"${mpi[@]}" "$M6TRAIN" --config "$tmp/c.yaml" --run-dir "$tmp/r2" --set train.device=auto \
  > "$tmp/auto.out" 2> "$tmp/auto.err" || fail "train.device=auto on 2 ranks failed"
grep -q "backend cpu" "$tmp/auto.out" || fail "auto did not train on the CPU: $(cat "$tmp/auto.out")"
echo "ok: train.device=auto without a GPU trains on the CPU"
