#!/usr/bin/env bash
# A short real training run on a small corpus: the eval loss must fall, the
# run directory must hold config.json, metrics.jsonl (with every field the
# console line reports) and a checkpoint, and export must write a safetensors
# file with the DESIGN.md tensor names and the config in __metadata__.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" /usr/share/common-licenses/GPL-3 \
  /usr/share/common-licenses/Apache-2.0 --output "$tmp/data" --val-fraction 0.1

cat > "$tmp/small.yaml" <<YAML
model:
  vocab_size: 256
  max_seq_len: 64
  d_model: 64
  n_heads: 4
  n_layers: 2
  d_ff: 128
  moe: {every: 2, experts: 4, top_k: 2, capacity_factor: 1.0}
data:
  train: $tmp/data/train_*.bin
  val: $tmp/data/val_*.bin
train: {steps: 80, seq_len: 64, micro_batch: 8, global_batch: 16, threads: 2}
optim: {lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 10}
eval: {every: 40, batches: 4}
log: {every: 10}
YAML

"$M6TRAIN" --config "$tmp/small.yaml" --run-dir "$tmp/run" | tee "$tmp/console.txt"
test -f "$tmp/run/config.json"
test -f "$tmp/run/metrics.jsonl"
test -f "$tmp/run/checkpoints/latest"
grep -q "tok/s" "$tmp/console.txt"

"$M6TRAIN" export --run-dir "$tmp/run" --out "$tmp/model.safetensors"

$py - "$tmp" <<'PY'
import json, struct, sys
tmp = sys.argv[1]
recs = [json.loads(l) for l in open(f"{tmp}/run/metrics.jsonl")]
evals = [r for r in recs if r["kind"] == "eval"]
trains = [r for r in recs if r["kind"] == "train"]
assert len(evals) >= 3, evals
first, last = evals[0]["eval_loss"], evals[-1]["eval_loss"]
print(f"eval loss {first:.4f} -> {last:.4f}")
assert first > 5.0, f"initial eval loss {first} should be near ln(256) = 5.55"
assert last < first - 1.5, f"eval loss did not fall enough: {first} -> {last}"
for k in ["step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "eta_s",
          "dropped_frac", "aux_loss", "z_loss", "expert_load"]:
    assert k in trains[-1], f"metrics.jsonl train record lacks {k}"
assert len(trains[-1]["expert_load"]) == 1 and len(trains[-1]["expert_load"][0]) == 4
assert trains[-1]["step"] == 80
# export: header names and metadata
with open(f"{tmp}/model.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    hdr = json.loads(f.read(n))
meta = hdr.pop("__metadata__")
cfg = json.loads(meta["config"])
assert cfg["model"]["d_model"] == 64 and cfg["model"]["moe"]["experts"] == 4
names = set(hdr)
want = {"tok_emb.weight", "pos_emb.weight", "ln_f.weight", "ln_f.bias",
        "layers.0.attn.qkv.weight", "layers.0.mlp.fc1.weight", "layers.1.moe.router.weight",
        "layers.1.moe.experts.3.fc2.bias"}
assert want <= names, want - names
assert hdr["layers.0.attn.qkv.weight"]["shape"] == [192, 64]
assert hdr["layers.1.moe.experts.0.fc1.weight"]["shape"] == [128, 64]
print("ok:", len(names), "tensors exported")
PY

# A console reader that goes away (`| head`, a killed `tee`, mpirun closing a
# rank's output pipe) does not end the run: the writes fail quietly and the
# run finishes with exit 0 and its checkpoint (SIGPIPE would kill it: 141).
(
  rc=0
  "$M6TRAIN" --config "$tmp/small.yaml" --run-dir "$tmp/piped" --max-steps 12 \
    --set log.every=1 --set eval.every=0 || rc=$?
  echo "$rc" > "$tmp/piped.rc"
) 2>&1 | head -n 1 > /dev/null
rc=$(cat "$tmp/piped.rc")
[ "$rc" = 0 ] || { echo "FAIL: run with a closed console exited $rc (want 0)" >&2; exit 1; }
test "$(cat "$tmp/piped/checkpoints/latest")" = step_00000012
echo "ok: closed console pipe, run finished (exit 0, step 12 saved)"
