#!/usr/bin/env bash
# train.graphs and log.profile from the command line, on the CPU:
#  - a dense model trained with train.graphs: on (the recording twin of CUDA
#    graphs: micro-batches replayed from closures) ends with checkpoint files
#    byte-identical to graphs off, with gradient accumulation and with fp16
#    compute through an injected overflow (the loss scale halves: the next
#    micro-batches have another gradient scale, so a new graph is recorded),
#    with the optimizer offloaded to the host, and on 2 ranks;
#  - train.graphs: on with MoE layers or streamed weights is a config error
#    (exit 2) naming the reason;
#  - log.profile: true writes profile.json with the ops of the timed steps
#    (all after the first) and logs the table; profiling changes no result.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
source "$M6_SOURCE_DIR/tests/cli/checkpoint_files.bash"
export OMP_WAIT_POLICY=PASSIVE OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d)
trap '[[ -n "${KEEP_TMP:-}" ]] || rm -rf "$tmp"' EXIT

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" --output "$tmp/data" --val-fraction 0.1 > /dev/null
cat > "$tmp/dense.yaml" <<YAML
model: {vocab_size: 256, max_seq_len: 16, d_model: 32, n_heads: 2, n_layers: 2, d_ff: 64}
data: {train: $tmp/data/train_*.bin, val: $tmp/data/val_*.bin}
train: {steps: 6, seq_len: 16, micro_batch: 2, global_batch: 6, threads: 1, device: cpu}
optim: {warmup_steps: 1}
eval: {every: 3, batches: 2}
log: {every: 1}
YAML
run() {  # NAME [--set ...]
  local name=$1
  shift
  "$M6TRAIN" --config "$tmp/dense.yaml" --run-dir "$tmp/$name" "$@" > "$tmp/$name.out" 2>&1 ||
    { cat "$tmp/$name.out" >&2; exit 1; }
}
same_checkpoints() {
  same_checkpoint_files "$tmp/$1/checkpoints/step_00000006" "$tmp/$2/checkpoints/step_00000006" \
    "$1 = $2"
}
losses() { grep '"kind":"train"' "$tmp/$1/metrics.jsonl" | grep -o '"loss":[^,]*'; }

for prec in fp32 fp16; do
  # fp16: an overflow injected at step 3 halves the loss scale, so the
  # micro-batches after it run with another gradient scale: a new graph.
  fp=""
  [[ $prec == fp16 ]] && fp=overflow@2@0
  M6_FAILPOINTS=$fp run "off_$prec" --set train.graphs=off --set precision.compute=$prec
  M6_FAILPOINTS=$fp run "on_$prec" --set train.graphs=on --set precision.compute=$prec
  grep -q "graphs: on" "$tmp/on_$prec.out" || { echo "graphs not on:" >&2; cat "$tmp/on_$prec.out" >&2; exit 1; }
  grep -q "graphs: off (train.graphs is off)" "$tmp/off_$prec.out"
  same_checkpoints "off_$prec" "on_$prec"
  [[ "$(losses "off_$prec")" == "$(losses "on_$prec")" ]] || { echo "losses differ ($prec)" >&2; exit 1; }
  [[ $(losses "on_$prec" | wc -l) -eq 6 ]]
  # 18 micro-batches; each gradient scale's first runs eagerly (warm-up)
  replays=17
  [[ $prec == fp16 ]] && replays=16
  grep -q "graphs: $replays micro-batches replayed" "$tmp/on_$prec.out" ||
    { echo "expected $replays replays:" >&2; grep "graphs:" "$tmp/on_$prec.out" >&2; exit 1; }
  if [[ $prec == fp16 ]]; then
    grep -q "fp16 gradient overflow.*loss scale 65536 -> 32768" "$tmp/on_fp16.out" ||
      { echo "no overflow in the fp16 run" >&2; cat "$tmp/on_fp16.out" >&2; exit 1; }
  fi
done
echo "graphs on = off, fp32 and fp16, with accumulation 3"
# The offloaded optimizer (host AdamW, staging copies) runs after the
# micro-batches, outside the graph: allowed, and the same bits.
run off_offload --set train.graphs=off --set offload.optimizer=0.5
run on_offload --set train.graphs=on --set offload.optimizer=0.5
grep -q "graphs: 17 micro-batches replayed" "$tmp/on_offload.out"
same_checkpoints off_offload on_offload
# Data parallel: 2 ranks (gradient all-reduce after the replayed micro-batches).
for g in off on; do
  mpirun --oversubscribe --bind-to none -np 2 "$M6TRAIN" --config "$tmp/dense.yaml" \
    --run-dir "$tmp/dp_$g" --set train.global_batch=8 --set train.graphs=$g > "$tmp/dp_$g.out" 2>&1 ||
    { cat "$tmp/dp_$g.out" >&2; exit 1; }
done
grep -q "graphs: 11 micro-batches replayed" "$tmp/dp_on.out"  # 6 steps x 2, less the warm-up
same_checkpoints dp_off dp_on

expect_config_error() {  # NAME PATTERN [--set ...]
  local name=$1 pattern=$2 rc=0
  shift 2
  "$M6TRAIN" --config "$tmp/dense.yaml" --run-dir "$tmp/$name" --set train.graphs=on "$@" \
    > "$tmp/$name.out" 2>&1 || rc=$?
  [[ $rc -eq 2 ]] || { echo "$name: exit $rc, expected 2" >&2; cat "$tmp/$name.out" >&2; exit 1; }
  grep -q "$pattern" "$tmp/$name.out" || { echo "$name: no '$pattern'" >&2; cat "$tmp/$name.out" >&2; exit 1; }
  echo "$name: exit 2, $(grep -m1 -o 'train.graphs.*' "$tmp/$name.out" | cut -c1-110)"
}
expect_config_error moe "model.moe.every is 2" --set model.moe.every=2 --set model.moe.experts=4
expect_config_error offload "offload.params is 0.5" --set offload.optimizer=1 --set offload.params=0.5

# The profiler: MoE model, so that the MoE ops appear too.
moe=(--set model.moe.every=2 --set model.moe.experts=4 --set model.moe.top_k=2)
run moe_plain "${moe[@]}"
run moe_profile "${moe[@]}" --set log.profile=true
same_checkpoints moe_plain moe_profile
/usr/bin/python3 - "$tmp/moe_profile/profile.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
assert p["steps"] == 5, p["steps"]  # 6 steps, the first is the warm-up
ops = {o["op"]: o for o in p["ops"]}
for op in ("gemm", "attention_fwd", "attention_bwd", "moe_permute", "linear_fwd_grouped",
           "crossentropy_fwd", "adamw_multi", "router_aux_sums", "sum_to"):
    assert op in ops, (op, sorted(ops))
# Three micro-batches a step: one cross-entropy and one loss sum each, one
# optimizer launch a step; two MoE layers... one (every 2 of 2 layers).
assert ops["crossentropy_fwd"]["calls_per_step"] == 3, ops["crossentropy_fwd"]
assert ops["adamw_multi"]["calls_per_step"] == 1, ops["adamw_multi"]
assert ops["moe_permute"]["calls_per_step"] == 3, ops["moe_permute"]
share = sum(o["share_of_step"] for o in p["ops"])
assert 0 < share <= 1.0, share
assert all(o["ms_per_step"] >= 0 for o in p["ops"])
print(f"profile: {len(ops)} ops, {100 * share:.1f}% of {p['step_ms']:.2f} ms/step in ops")
PY
grep -q "profile: 5 steps after the warm-up" "$tmp/moe_profile.out"
echo "graphs_profile: ok"
