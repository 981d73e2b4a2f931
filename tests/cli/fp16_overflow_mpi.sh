#!/usr/bin/env bash
# fp16 dynamic loss scaling under mpirun (precision.compute: fp16): an
# overflow injected into the gradients of ONE rank (failpoint overflow@5@1)
# skips step 6 on every rank and halves the loss scale (2^16 -> 2^15):
# - the skip is recorded once, with reason "overflow" and the new scale, and
#   each of the two ranks reports it on stderr;
# - the checkpoint of step 10 records scale 32768, 9 updates and 1 skipped step;
# - the update was skipped everywhere: the run matches, bit for bit, the run
#   whose overflow hits rank 0 instead (dense weights are written by rank 0
#   and each rank writes its own experts, ep = 2), so neither rank applied
#   the step; and steps 1-6 match the run without overflow, step 7 does not;
# - with precision.comm: fp16 as well, a clean run skips nothing (loss-scaled
#   gradients travel without the fixed fp16 wire scale) and stays within 1%
#   of the fp32-wire run.
source "$(dirname "$0")/ckpt_common.bash"
require_mpi 2

write_config "$tmp/h.yaml" 10 'precision: {compute: fp16}'
run() {  # RUN_DIR FAILPOINTS [--set ...]
  local dir=$1 fp=$2
  shift 2
  M6_FAILPOINTS=$fp "${MPIRUN[@]}" -x M6_FAILPOINTS -np 2 "$M6TRAIN" --config "$tmp/h.yaml" \
    --set parallel.ep=2 --run-dir "$dir" "$@" > "$dir.out" 2> "$dir.err"
}
run "$tmp/r1" overflow@5@1
run "$tmp/r0" overflow@5@0
run "$tmp/clean" ""
run "$tmp/wire16" "" --set precision.comm=fp16

for r in 0 1; do
  if ! grep -q "rank $r/2.*step 6: fp16 gradient overflow.*loss scale 65536 -> 32768" "$tmp/r1.err"; then
    echo "FAIL: rank $r did not report skipping step 6" >&2
    cat "$tmp/r1.err" >&2
    exit 1
  fi
done
$py - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
def recs(run, kind):
    return [r for r in map(json.loads, open(f"{tmp}/{run}/metrics.jsonl")) if r["kind"] == kind]
skips = recs("r1", "skip")
assert [(r["step"], r["reason"], r["loss_scale"]) for r in skips] == [(6, "overflow", 32768)], skips
assert recs("clean", "skip") == [], recs("clean", "skip")
# fp16 on the wire too: the gradients already carry the loss scale, so they
# travel without the fixed wire scale and nothing overflows.
assert recs("wire16", "skip") == [], recs("wire16", "skip")
w = [r["loss"] for r in recs("wire16", "train")]
cl = [r["loss"] for r in recs("clean", "train")]
assert max(abs(x - y) / y for x, y in zip(w, cl)) < 0.01, (w, cl)
m = json.load(open(f"{tmp}/r1/checkpoints/step_00000010/manifest.json"))
ls = m["loss_scaler"]
assert ls["active"] and ls["scale"] == 32768 and ls["good_steps"] == 4, ls
assert m["adam_t"] == 9 and m["skipped_steps"] == 1, (m["adam_t"], m["skipped_steps"])
a = [r["loss"] for r in recs("r1", "train")]
c = [r["loss"] for r in recs("clean", "train")]
assert a[:6] == c[:6], (a, c)
assert a[6] != c[6], "step 7 is the same with and without the skipped update"
print("ok: step 6 skipped on both ranks, loss scale 65536 -> 32768")
PY
same_digests "$tmp/r1/checkpoints/step_00000010" "$tmp/r0/checkpoints/step_00000010"
echo "ok: fp16 overflow on one rank skips the step on every rank"
