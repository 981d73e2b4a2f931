#!/usr/bin/env bash
# Granular offload (offload.optimizer, offload.params, offload.chunk_mb) moves
# master weights and Adam moments to the CPU backend's host arena and runs
# their AdamW on the host, piece by piece; the results are bit-identical to no
# offload: the checkpoints (weights and moments) after 3 steps match byte for
# byte for dense and MoE models, partial and full offload, tiny transfer
# pieces, with recompute, on 1 and 4 ranks; a run resumed with another offload
# setting continues exactly; an in-run Pseudo-to-Real delink with offload
# matches one without. The host arena really holds the offloaded bytes
# (mem_host_peak_bytes > 0, device peak lower). A backend refusal and the
# config errors are in cli.bad_configs.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
source "$M6_SOURCE_DIR/tests/cli/checkpoint_files.bash"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
tmp=$(mktemp -d)
trap '[[ -n "${KEEP_TMP:-}" ]] || rm -rf "$tmp"' EXIT

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" --output "$tmp/data" --val-fraction 0.1 > /dev/null
cat > "$tmp/dense.yaml" <<YAML
model: {vocab_size: 256, max_seq_len: 16, d_model: 32, n_heads: 2, n_layers: 3, d_ff: 64}
data: {train: $tmp/data/train_*.bin, val: $tmp/data/val_*.bin}
train: {steps: 4, seq_len: 16, micro_batch: 2, global_batch: 8, threads: 1, device: cpu}
optim: {warmup_steps: 1}
eval: {every: 0, batches: 2}
log: {every: 1}
checkpoint: {every: 1, keep: 10}
YAML
sed 's/d_ff: 64}/d_ff: 64, moe: {every: 1, experts: 4, router: topk, top_k: 2, capacity_factor: 1.0, min_capacity: 1}}/' \
  "$tmp/dense.yaml" > "$tmp/moe.yaml"

# run NAME CONFIG RANKS [args...]
run() {
  local name=$1 cfg=$2 w=$3
  shift 3
  local args=(--config "$tmp/$cfg.yaml" --run-dir "$tmp/$name" "$@")
  if [[ $w == 1 ]]; then
    "$M6TRAIN" "${args[@]}" > "$tmp/$name.out"
  else
    mpirun --oversubscribe --bind-to none -np "$w" "$M6TRAIN" "${args[@]}" > "$tmp/$name.out"
  fi
}
same() {  # same A B STEP: the weight and moment files of two checkpoints, byte for byte
  same_checkpoint_files "$tmp/$1/checkpoints/step_0000000$3" "$tmp/$2/checkpoints/step_0000000$3" \
    "$1 = $2 at step $3"
}
peak() { grep '"kind":"train"' "$tmp/$1/metrics.jsonl" | tail -1 | grep -o "\"$2\":[0-9]*" | cut -d: -f2; }

for cfg in dense moe; do
  run ${cfg}_ref $cfg 1
  run ${cfg}_half $cfg 1 --set offload.optimizer=0.5 --set offload.params=0.5
  run ${cfg}_moments $cfg 1 --set offload.optimizer=1
  run ${cfg}_all $cfg 1 --set offload.optimizer=1 --set offload.params=1 --set offload.chunk_mb=0.001
  run ${cfg}_all_layer $cfg 1 --set offload.optimizer=1 --set offload.params=0.75 --set train.recompute=layer
  for v in half moments all all_layer; do same ${cfg}_ref ${cfg}_$v 4; done
  # The host arena holds what left the device.
  ref_dev=$(peak ${cfg}_ref mem_peak_bytes) all_dev=$(peak ${cfg}_all mem_peak_bytes)
  all_host=$(peak ${cfg}_all mem_host_peak_bytes) ref_host=$(peak ${cfg}_ref mem_host_peak_bytes)
  echo "$cfg: device peak $ref_dev -> $all_dev with full offload, host $ref_host -> $all_host"
  [[ $ref_host == 0 && $all_host -gt 0 && $all_dev -lt $ref_dev ]]
done

# 4 ranks, experts split (ep 2) and offloaded.
run w4_ref moe 4 --set parallel.ep=2
run w4_off moe 4 --set parallel.ep=2 --set offload.optimizer=1 --set offload.params=0.5
same w4_ref w4_off 4

# Resume with another offload setting: 2 steps without, 2 more with full offload.
run resumed moe 1 --max-steps 2
run resumed moe 1 --resume auto --set offload.optimizer=1 --set offload.params=1
same moe_ref resumed 4

# Pseudo-to-Real delink in the run, with and without offload.
p2r="--set model.sharing.groups=1 --set model.sharing.delink_at_step=2"
run p2r_ref moe 1 $p2r
run p2r_off moe 1 $p2r --set offload.optimizer=0.5 --set offload.params=0.5
same p2r_ref p2r_off 4
echo "offload_exact: ok"
