#!/usr/bin/env bash
# Pseudo-to-Real on 4 ranks (mpirun), for an MoE model with ep = 2 (experts
# split over EP groups {0,1} {2,3}, tokens exchanged by all-to-all) and a
# dense model: every rank delinks its own experts, and
#  A  the eval loss (summed over the 4 ranks) is bit-identical just before
#     and just after the in-run delink at step 4; the loss keeps falling;
#     the final checkpoint holds the real layout and exports every layer;
#  B  stopped at 3, resumed across the delink to 6, resumed to 8: the same
#     final eval loss as A, bit for bit;
#  D  the 4-rank pseudo checkpoint of step 4 (expert files split by EP rank)
#     delinked offline and resumed on 4 ranks: the same as A again.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
export OMP_WAIT_POLICY=PASSIVE OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3
command -v mpirun > /dev/null || { echo "FAIL: mpirun not found (apt-get install openmpi-bin)"; exit 1; }
mpi4() { mpirun --oversubscribe --allow-run-as-root -np 4 "$M6TRAIN" "$@"; }

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" /usr/share/common-licenses/GPL-3 \
  /usr/share/common-licenses/Apache-2.0 --output "$tmp/data" --val-fraction 0.1 >/dev/null

# write_config FILE MOE SHARING EP
write_config() {
  cat > "$1" <<YAML
model:
  vocab_size: 256
  max_seq_len: 32
  d_model: 32
  n_heads: 2
  n_layers: 4
  d_ff: 64
  moe: $2
  sharing: $3
data:
  train: $tmp/data/train_*.bin
  val: $tmp/data/val_*.bin
train: {steps: 8, seq_len: 32, micro_batch: 2, global_batch: 8, threads: 1}
optim: {lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 2}
eval: {every: 2, batches: 4}
log: {every: 2}
parallel: {ep: $4}
YAML
}

for kind in moe dense; do
  d="$tmp/$kind"
  mkdir -p "$d"
  if [[ $kind == moe ]]; then moe="{every: 1, experts: 4, top_k: 2, capacity_factor: 1.25}"; groups=2; ep=2
  else moe="{every: 0}"; groups=1; ep=1; fi
  write_config "$d/pseudo.yaml" "$moe" "{groups: $groups, delink_at_step: 4}" $ep
  write_config "$d/pseudo0.yaml" "$moe" "{groups: $groups}" $ep
  write_config "$d/real.yaml" "$moe" "{groups: 0}" $ep

  echo "== $kind (4 ranks, ep $ep): A (in-run delink at step 4)"
  mpi4 --config "$d/pseudo.yaml" --run-dir "$d/A" 2>&1 | tee "$d/A.txt"
  grep -q "delink: step 4: .*(identical)" "$d/A.txt"
  "$M6TRAIN" export --run-dir "$d/A" --out "$d/A.safetensors" > /dev/null

  echo "== $kind: B (stop at 3, resume across the delink to 6, resume to 8)"
  mpi4 --config "$d/pseudo.yaml" --run-dir "$d/B" --max-steps 3 > /dev/null 2>&1
  mpi4 --config "$d/pseudo.yaml" --run-dir "$d/B" --resume auto --max-steps 3 > /dev/null 2>&1
  mpi4 --config "$d/pseudo.yaml" --run-dir "$d/B" --resume auto > "$d/B.txt" 2>&1
  grep -q "holds the delinked (real) model" "$d/B.txt"

  echo "== $kind: D (offline delink of the 4-rank step-4 checkpoint, resumed on 4 ranks)"
  mpi4 --config "$d/pseudo0.yaml" --run-dir "$d/D0" --max-steps 4 > /dev/null 2>&1
  "$M6TRAIN" delink --from "$d/D0" --config "$d/real.yaml" --out "$d/D" --world 4
  mpi4 --config "$d/real.yaml" --run-dir "$d/D" --resume auto > /dev/null 2>&1

  $py - "$d" <<'PY'
import json, struct, sys
d = sys.argv[1]
recs = lambda run: [json.loads(l) for l in open(f"{d}/{run}/metrics.jsonl")]
a = recs("A")
ev = {r["step"]: r["eval_loss"] for r in a if r["kind"] == "eval"}
dl = [r for r in a if r["kind"] == "delink"]
assert len(dl) == 1, dl
dl = dl[0]
print("A delink event:", dl)
assert dl["step"] == 4 and dl["identical"] is True
assert dl["loss_before_hex"] == dl["loss_after_hex"]
assert float.hex(dl["loss_before"]) == float.hex(dl["loss_after"]) == float.hex(ev[4])
print("A eval losses:", ev)
assert ev[6] < ev[4] and ev[8] < ev[6], f"eval loss did not keep falling after the delink: {ev}"
latest = open(f"{d}/A/checkpoints/latest").read().strip()
man = json.load(open(f"{d}/A/checkpoints/{latest}/manifest.json"))
assert man["config"]["model"]["sharing"]["groups"] == 0
def last_eval(run):
    e = [r for r in recs(run) if r["kind"] == "eval"][-1]
    return e["step"], float.hex(e["eval_loss"])
for run in ["B", "D"]:
    print(run, "final eval", last_eval(run), "A", last_eval("A"))
    assert last_eval(run) == last_eval("A"), f"{run} differs from A"
with open(f"{d}/A.safetensors", "rb") as f:
    hdr = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
assert {f"layers.{l}.attn.qkv.weight" for l in range(4)} <= hdr.keys()
print("ok")
PY
done
echo "p2r_mpi: all checks passed"
