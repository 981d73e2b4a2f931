#!/usr/bin/env bash
# Mixed precision end to end (precision.compute, DESIGN.md section 5): the
# model of configs/tiny.yaml trained for 300 steps in fp32, bf16 and fp16
# (the CPU backend's exact emulation) ends within 2% of the fp32 eval loss.
# The three runs start from the same weights and see the same batches, so the
# difference is the precision alone. Kept cheap for CI: the tiny model and
# optimizer as they are, but 8 sequences a step (global_batch 8, not 16), one
# evaluation at the end on 8 batches, and the three runs side by side on one
# thread each. Also checks that bf16/fp16 really round (their losses differ
# from fp32's), that the fp16 run used the loss scaler (its checkpoint records
# an active scaler), and prints the wall time per step of each precision (the
# cost of the emulation; not asserted).
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
export OMP_WAIT_POLICY=PASSIVE
tmp=$(mktemp -d)
trap '[[ -n "${KEEP_TMP:-}" ]] || rm -rf "$tmp"' EXIT
py=/usr/bin/python3
steps=${M6_PRECISION_STEPS:-300}

bash "$M6_SOURCE_DIR/scripts/build-corpus.sh" "$M6TRAIN" "$tmp/data" > /dev/null
for p in fp32 bf16 fp16; do
  (
    start=$(date +%s.%N)
    "$M6TRAIN" --config "$M6_SOURCE_DIR/configs/tiny.yaml" --run-dir "$tmp/$p" \
      --set data.train="$tmp/data/train_*.bin" --set data.val="$tmp/data/val_*.bin" \
      --set train.steps="$steps" --set train.global_batch=8 --set train.micro_batch=8 \
      --set train.threads=1 --set train.device=cpu --set eval.every=0 --set eval.batches=8 \
      --set log.every=50 --set precision.compute=$p > "$tmp/$p.out" 2>&1
    echo "$start $(date +%s.%N)" > "$tmp/$p.time"
  ) &
done
wait

$py - "$tmp" "$steps" <<'PY'
import glob, json, sys
tmp, steps = sys.argv[1], int(sys.argv[2])
def final_eval(p):
    ev = [r for r in map(json.loads, open(f"{tmp}/{p}/metrics.jsonl")) if r["kind"] == "eval"]
    assert ev and ev[-1]["step"] == steps, f"{p}: eval records {ev}"
    return ev[-1]["eval_loss"]
def train_losses(p):
    return [r["loss"] for r in map(json.loads, open(f"{tmp}/{p}/metrics.jsonl")) if r["kind"] == "train"]
def per_step(p):
    a, b = map(float, open(f"{tmp}/{p}.time").read().split())
    return (b - a) / steps
ref = final_eval("fp32")
failures = []
for p in ("fp32", "bf16", "fp16"):
    loss, rel = final_eval(p), abs(final_eval(p) - ref) / ref
    print(f"{p}: eval loss after {steps} steps {loss:.4f} (rel diff to fp32 {rel:.2e}), "
          f"{per_step(p):.3f} s/step wall ({per_step(p) / per_step('fp32'):.2f}x fp32)")
    if p != "fp32":
        if not rel <= 0.02: failures.append(f"{p}: eval loss {loss:.4f} is {rel:.2%} from fp32's {ref:.4f}")
        if train_losses(p) == train_losses("fp32"): failures.append(f"{p}: losses equal fp32's: nothing was rounded")
ck = sorted(glob.glob(f"{tmp}/fp16/checkpoints/step_*/manifest.json"))[-1]
ls = json.load(open(ck))["loss_scaler"]
print(f"fp16 loss scaler at the end: {ls}")
if not ls.get("active") or not ls["scale"] >= 1: failures.append(f"fp16: loss scaler not active: {ls}")
ck_bf16 = sorted(glob.glob(f"{tmp}/bf16/checkpoints/step_*/manifest.json"))[-1]
if json.load(open(ck_bf16))["loss_scaler"].get("active"): failures.append("bf16 run recorded an active loss scaler")
if failures:
    print("FAILED:\n  " + "\n  ".join(failures)); sys.exit(1)
print("ok: bf16 and fp16 end within 2% of fp32")
PY
