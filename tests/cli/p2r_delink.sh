#!/usr/bin/env bash
# Pseudo-to-Real on one rank, for a dense model (4 layers, 2 shared sets), an
# MoE model (4 top-2 MoE layers, 1 shared set) and a model with MoE every
# other layer (dense, MoE, dense, MoE; 1 group: both pairs share one
# (dense, MoE) pair of sets):
#  A  in-run delink at step 10 of 20: the eval loss just before and just after
#     the delink is bit-identical (metrics event "delink", hex floats), the
#     loss keeps falling, the final checkpoint holds the real layout and the
#     export lists every layer with its own (now different) weights;
#  B  stopped at 7, resumed across the delink to 13, resumed again to 20 with
#     the pseudo config: the same final eval loss as A, bit for bit;
#  C  the step-13 checkpoint of B resumed with the REAL config: the same again;
#  D  offline: a pseudo run without delink stopped at 10, `m6train delink`
#     to the real config, resumed to 20: the same as A (the offline delink is
#     the in-run one), and its export equals the pseudo export tensor for tensor;
#  plus the offline delink's refusals (mismatched config, non-pseudo
#  checkpoint, --out already used).
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
export OMP_WAIT_POLICY=PASSIVE
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" /usr/share/common-licenses/GPL-3 \
  /usr/share/common-licenses/Apache-2.0 --output "$tmp/data" --val-fraction 0.1 >/dev/null

# write_config FILE MOE SHARING [D_FF]
write_config() {
  cat > "$1" <<YAML
model:
  vocab_size: 256
  max_seq_len: 32
  d_model: 32
  n_heads: 2
  n_layers: 4
  d_ff: ${4:-64}
  moe: $2
  sharing: $3
data:
  train: $tmp/data/train_*.bin
  val: $tmp/data/val_*.bin
train: {steps: 20, seq_len: 32, micro_batch: 4, global_batch: 4, threads: 1}
optim: {lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 3}
eval: {every: 5, batches: 4}
log: {every: 5}
YAML
}

# expect_fail CODE PATTERN CMD...: CMD must exit with CODE and print PATTERN.
expect_fail() {
  local code=$1 pattern=$2 rc=0
  shift 2
  "$@" > "$tmp/err.txt" 2>&1 || rc=$?
  if [[ $rc != "$code" ]] || ! grep -q -- "$pattern" "$tmp/err.txt"; then
    echo "FAIL: expected exit $code and '$pattern' from: $*"; cat "$tmp/err.txt"; exit 1
  fi
}

for kind in dense moe pairs; do
  d="$tmp/$kind"
  mkdir -p "$d"
  if [[ $kind == dense ]]; then moe="{every: 0}"; groups=2
  elif [[ $kind == moe ]]; then moe="{every: 1, experts: 4, top_k: 2, capacity_factor: 1.25}"; groups=1
  else moe="{every: 2, experts: 4, top_k: 2, capacity_factor: 1.25}"; groups=1; fi
  write_config "$d/pseudo.yaml" "$moe" "{groups: $groups, delink_at_step: 10}"
  write_config "$d/pseudo0.yaml" "$moe" "{groups: $groups}"
  write_config "$d/real.yaml" "$moe" "{groups: 0}"
  write_config "$d/bad.yaml" "$moe" "{groups: 0}" 48
  echo "== $kind: A (in-run delink at step 10)"
  "$M6TRAIN" --config "$d/pseudo.yaml" --run-dir "$d/A" | tee "$d/A.txt"
  grep -q "delink: step 10: .*(identical)" "$d/A.txt"

  echo "== $kind: B (stop at 7, resume across the delink to 13, resume to 20)"
  "$M6TRAIN" --config "$d/pseudo.yaml" --run-dir "$d/B" --max-steps 7 > /dev/null
  "$M6TRAIN" --config "$d/pseudo.yaml" --run-dir "$d/B" --resume auto --max-steps 6 > /dev/null
  "$M6TRAIN" --config "$d/pseudo.yaml" --run-dir "$d/B" --resume auto | tee "$d/B.txt"
  grep -q "holds the delinked (real) model" "$d/B.txt"

  echo "== $kind: C (B's step-13 checkpoint resumed with the real config)"
  "$M6TRAIN" --config "$d/real.yaml" --run-dir "$d/C" \
    --resume "$d/B/checkpoints/step_00000013" > /dev/null

  echo "== $kind: D (offline delink at step 10)"
  "$M6TRAIN" --config "$d/pseudo0.yaml" --run-dir "$d/D0" --max-steps 10 > /dev/null
  "$M6TRAIN" delink --from "$d/D0" --config "$d/real.yaml" --out "$d/D" | tee "$d/D.txt"
  grep -q "step 10, $groups shared set(s)" "$d/D.txt"
  "$M6TRAIN" export --run-dir "$d/D0" --out "$d/D0.safetensors" > /dev/null
  "$M6TRAIN" export --run-dir "$d/D" --out "$d/D.safetensors" > /dev/null
  "$M6TRAIN" --config "$d/real.yaml" --run-dir "$d/D" --resume auto > /dev/null
  "$M6TRAIN" export --run-dir "$d/A" --out "$d/A.safetensors" > /dev/null

  echo "== $kind: offline delink refusals"
  expect_fail 2 "differs in: model.d_ff 64 (pseudo) vs 48" \
    "$M6TRAIN" delink --from "$d/D0" --config "$d/bad.yaml" --out "$d/E"
  expect_fail 2 "model.sharing.groups: the real model shares no layers" \
    "$M6TRAIN" delink --from "$d/D0" --config "$d/pseudo0.yaml" --out "$d/E"
  expect_fail 4 "not a pseudo model" \
    "$M6TRAIN" delink --from "$d/D" --config "$d/real.yaml" --out "$d/E"
  expect_fail 2 "already holds checkpoints" \
    "$M6TRAIN" delink --from "$d/D0" --config "$d/real.yaml" --out "$d/D"

  $py - "$d" "$groups" "$kind" <<'PY'
import json, struct, sys
d, groups, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# Two layers of one set: 0 and 1, or 0 and 2 when sets hold (dense, MoE) pairs.
l0, l1 = (0, 2) if kind == "pairs" else (0, 1)

def records(run):
    # Raw JSON texts of the numbers too: nlohmann writes the shortest text that
    # round-trips, so equal texts mean equal doubles.
    return [json.loads(l) for l in open(f"{d}/{run}/metrics.jsonl")]

def last_eval(run):
    evals = [r for r in records(run) if r["kind"] == "eval"]
    return evals[-1]["step"], repr(evals[-1]["eval_loss"])

a = records("A")
ev = {r["step"]: r["eval_loss"] for r in a if r["kind"] == "eval"}
dl = [r for r in a if r["kind"] == "delink"]
assert len(dl) == 1, dl
dl = dl[0]
print("A delink event:", dl)
assert dl["step"] == 10 and dl["identical"] is True and dl["groups"] == groups
assert dl["loss_before_hex"] == dl["loss_after_hex"], dl
assert float.hex(dl["loss_before"]) == float.hex(dl["loss_after"]), dl
assert float.hex(dl["loss_before"]) == float.hex(ev[10]), (dl, ev[10])
assert dl["params_after"] > dl["params_before"], dl
print("A eval losses:", ev)
assert ev[15] < ev[10] and ev[20] < ev[15], f"eval loss did not keep falling after the delink: {ev}"

# The final checkpoint holds the real layout.
latest = open(f"{d}/A/checkpoints/latest").read().strip()
man = json.load(open(f"{d}/A/checkpoints/{latest}/manifest.json"))
assert man["config"]["model"]["sharing"]["groups"] == 0, man["config"]["model"]["sharing"]

for run in ["B", "C", "D"]:
    print(run, "final eval", last_eval(run), "A", last_eval("A"))
    assert last_eval(run) == last_eval("A"), f"{run} differs from A"
b_dl = [r for r in records("B") if r["kind"] == "delink"]
assert len(b_dl) == 1 and b_dl[0]["identical"] is True and b_dl[0]["step"] == 10, b_dl

def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    hdr.pop("__metadata__")
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in hdr.items()}

# Offline delink: the real export equals the pseudo export (which repeats the
# shared sets for every logical layer), tensor for tensor.
p, r = tensors(f"{d}/D0.safetensors"), tensors(f"{d}/D.safetensors")
assert p.keys() == r.keys() and all(p[k] == r[k] for k in p), "offline delink changed a tensor"
assert p[f"layers.{l0}.attn.qkv.weight"] == p[f"layers.{l1}.attn.qkv.weight"]  # shared before
if kind == "pairs":  # the MoE layers 1 and 3 share their experts too
    assert p["layers.1.moe.experts.2.fc1.weight"] == p["layers.3.moe.experts.2.fc1.weight"]
    assert p["layers.0.mlp.fc1.weight"] == p["layers.2.mlp.fc1.weight"]
    assert p["layers.0.attn.qkv.weight"] != p["layers.1.attn.qkv.weight"]
# After training as the real model, layers of one set have drifted apart.
t = tensors(f"{d}/A.safetensors")
assert t[f"layers.{l0}.attn.qkv.weight"] != t[f"layers.{l1}.attn.qkv.weight"]
assert {f"layers.{l}.ln1.weight" for l in range(4)} <= t.keys()
print("ok:", len(t), "tensors exported after delink")
PY
done
echo "p2r_delink: all checks passed"
