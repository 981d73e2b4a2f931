#!/usr/bin/env bash
# Numerical faults (issue item 8): a non-finite gradient or loss skips the
# step -- weights and Adam moments untouched, the data position advances, the
# skip counted in metrics -- and train.max_skipped_steps consecutive skips
# abort with a clear message; the spike guard skips a spiking step.
source "$(dirname "$0")/ckpt_common.bash"

write_config "$tmp/s.yaml" 16 'checkpoint: {every: 1, keep: 100}'

# nan_grad@5 poisons the step that completes as step 6, nan_loss@8 step 9.
M6_FAILPOINTS=nan_grad@5,nan_loss@8 "$M6TRAIN" --config "$tmp/s.yaml" --run-dir "$tmp/nan" \
  > "$tmp/nan.log" 2> "$tmp/nan.err"
ck="$tmp/nan/checkpoints"
same_digests "$ck/step_00000005" "$ck/step_00000006"
same_digests "$ck/step_00000008" "$ck/step_00000009"
if diff -q <(digests "$ck/step_00000006") <(digests "$ck/step_00000007") > /dev/null; then
  echo "FAIL: step 7 did not update the weights" >&2
  exit 1
fi
grep -q "step 6: non-finite loss or gradient" "$tmp/nan.err"
grep -q "step 9: non-finite loss or gradient" "$tmp/nan.err"
$py - "$tmp/nan" <<'PY'
import json, sys
run = sys.argv[1]
recs = [json.loads(l) for l in open(run + "/metrics.jsonl")]
skips = [(r["step"], r["reason"]) for r in recs if r["kind"] == "skip"]
assert skips == [(6, "nonfinite"), (9, "nonfinite")], skips
train = [r for r in recs if r["kind"] == "train"]
assert train[-1]["step"] == 16 and train[-1]["skipped_steps"] == 2, train[-1]
m = json.load(open(run + "/checkpoints/step_00000016/manifest.json"))
# The data position advanced through the skipped steps; Adam counted only updates.
assert m["step"] == 16 and m["tokens_seen"] == 16 * 8 * 32 and m["adam_t"] == 14, m
assert m["skipped_steps"] == 2
PY
echo "ok: non-finite gradient and loss skipped, weights and moments untouched"

# Consecutive skips abort (exit 1) with a message that names the limit.
M6_FAILPOINTS=nan_grad@3,nan_grad@4,nan_grad@5 expect_rc 1 "$M6TRAIN" --config "$tmp/s.yaml" \
  --run-dir "$tmp/abort" --set train.max_skipped_steps=3 > /dev/null 2> "$tmp/abort.err"
grep -q "step 6: 3 consecutive steps skipped .*train.max_skipped_steps = 3" "$tmp/abort.err"
# Two in a row under a limit of 3 do not abort; the count restarts after an update.
M6_FAILPOINTS=nan_grad@3,nan_grad@4,nan_grad@6,nan_grad@7 "$M6TRAIN" --config "$tmp/s.yaml" \
  --run-dir "$tmp/under" --set train.max_skipped_steps=3 > /dev/null 2>&1
echo "ok: train.max_skipped_steps"

# The spike guard: a loss 100x the window's mean skips the update.
M6_FAILPOINTS=spike_loss@12 "$M6TRAIN" --config "$tmp/s.yaml" --run-dir "$tmp/spike" \
  --set train.spike_guard.window=6 --set train.spike_guard.z_threshold=50 > /dev/null 2> "$tmp/spike.err"
grep -q "step 13: loss spike" "$tmp/spike.err"
same_digests "$tmp/spike/checkpoints/step_00000012" "$tmp/spike/checkpoints/step_00000013"
# Without the guard the same run updates at step 13.
M6_FAILPOINTS=spike_loss@12 "$M6TRAIN" --config "$tmp/s.yaml" --run-dir "$tmp/noguard" > /dev/null
if diff -q <(digests "$tmp/noguard/checkpoints/step_00000012") \
  <(digests "$tmp/noguard/checkpoints/step_00000013") > /dev/null; then
  echo "FAIL: without the guard step 13 should update" >&2
  exit 1
fi
echo "ok: spike guard"
