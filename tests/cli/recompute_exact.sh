#!/usr/bin/env bash
# Activation checkpointing (train.recompute) changes what backward keeps, not
# what it computes: the loss and every gradient of one micro-batch are
# bit-identical with recompute none, attention and layer, for a dense model
# and for MoE models (top-2 dropping tokens, prototypes); and 3 training steps
# on 4 ranks (ep 2; ep 4 with every layer MoE and pseudo layer sharing) leave bit-identical
# weights and Adam moments in the checkpoints.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
source "$M6_SOURCE_DIR/tests/cli/checkpoint_files.bash"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
tmp=$(mktemp -d)
trap '[[ -n "${KEEP_TMP:-}" ]] || rm -rf "$tmp"' EXIT

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" --output "$tmp/data" --val-fraction 0.1 > /dev/null
for cfg in dense moe_top2_drop prototypes; do
  for r in none attention layer; do
    "$M6TRAIN" debug-step --config "$M6_SOURCE_DIR/tests/ref/configs/$cfg.yaml" \
      --set data.train="$tmp/data/train_*.bin" --set data.val="$tmp/data/val_*.bin" \
      --set train.recompute=$r --out "$tmp/$cfg-$r" > /dev/null
  done
  for r in attention layer; do
    cmp "$tmp/$cfg-none/grads.safetensors" "$tmp/$cfg-$r/grads.safetensors"
    cmp "$tmp/$cfg-none/result.json" "$tmp/$cfg-$r/result.json"
  done
  echo "$cfg: gradients identical with recompute none, attention, layer"
done

cat > "$tmp/moe.yaml" <<YAML
model: {vocab_size: 256, max_seq_len: 16, d_model: 32, n_heads: 2, n_layers: 4, d_ff: 64,
        moe: {every: 2, experts: 4, router: topk, top_k: 2, capacity_factor: 1.0, min_capacity: 1}}
data: {train: $tmp/data/train_*.bin, val: $tmp/data/val_*.bin}
train: {steps: 3, seq_len: 16, micro_batch: 2, global_batch: 16, threads: 1, device: cpu}
optim: {warmup_steps: 1}
eval: {every: 0, batches: 4}
log: {every: 1}
YAML
# run NAME EP RECOMPUTE [--set ...]
run() {
  local name=$1 ep=$2 r=$3
  shift 3
  mpirun --oversubscribe --bind-to none -np 4 "$M6TRAIN" --config "$tmp/moe.yaml" \
    --run-dir "$tmp/$name" --set parallel.ep="$ep" --set train.recompute="$r" "$@" > "$tmp/$name.out"
}
same_checkpoints() {  # the weight and moment files of the final checkpoints, byte for byte
  same_checkpoint_files "$tmp/$1/checkpoints/step_00000003" "$tmp/$2/checkpoints/step_00000003" \
    "$1 = $2"
}
for r in none attention layer; do run ep2_$r 2 $r; done
same_checkpoints ep2_none ep2_attention
same_checkpoints ep2_none ep2_layer
run ep4_shared_none 4 none --set model.moe.every=1 --set model.sharing.groups=2
run ep4_shared_layer 4 layer --set model.moe.every=1 --set model.sharing.groups=2
same_checkpoints ep4_shared_none ep4_shared_layer
# Recomputing is not a no-op: the layer run really recomputed (its forward
# exchanges ran again, so it moved more all-to-all bytes).
a2a() { grep -o '"a2a_bytes_per_step":[0-9.e+]*' "$tmp/$1/metrics.jsonl" | tail -1 | cut -d: -f2; }
none=$(a2a ep2_none) layer=$(a2a ep2_layer)
echo "all-to-all bytes in the last step: none $none, layer $layer"
/usr/bin/python3 -c "import sys; sys.exit(0 if float(sys.argv[2]) > float(sys.argv[1]) else 1)" "$none" "$layer"
echo "recompute_exact: ok"
