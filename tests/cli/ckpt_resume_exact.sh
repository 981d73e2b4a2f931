#!/usr/bin/env bash
# Bit-exact resume on one rank (issue item 4): 40 steps straight, and 20
# steps + --resume auto + 20 more, give the same loss at every step and
# byte-identical weights and Adam moments. Also: --resume PATH, a config
# change that is allowed on resume (learning-rate schedule of a longer run,
# checkpoint cadence, logging), and the spike guard's window carried across
# the resume (a spike at step 26 is caught only if the window was restored).
# And the same in fp16 (precision.compute): the loss scaler's state comes
# back from the manifest, so overflows back off and clean steps grow the
# scale at the same steps as in the uninterrupted run.
source "$(dirname "$0")/ckpt_common.bash"

# The spike guard rides along: window 8, z 4; spike_loss@25 makes step 26 a spike.
write_config "$tmp/a.yaml" 40 'checkpoint: {every: 10, keep: 2}' \
  'spike_guard: {window: 8, z_threshold: 4.0}'
export M6_FAILPOINTS=spike_loss@25

"$M6TRAIN" --config "$tmp/a.yaml" --run-dir "$tmp/straight" > "$tmp/straight.log"
"$M6TRAIN" --config "$tmp/a.yaml" --run-dir "$tmp/split" --max-steps 20 > "$tmp/split1.log"
test -d "$tmp/split/checkpoints/step_00000020"
"$M6TRAIN" --config "$tmp/a.yaml" --run-dir "$tmp/split" --resume auto > "$tmp/split2.log"
grep -q "resume: step 20 from" "$tmp/split2.log"

diff <(losses "$tmp/straight") <(losses "$tmp/split")
test "$(losses "$tmp/straight" | wc -l)" = 40
same_digests "$tmp/straight/checkpoints/step_00000040" "$tmp/split/checkpoints/step_00000040"
# The spike at step 26 was caught in both (after the resume only because the
# window came back from the manifest), and the same steps were skipped.
skips() {
  $py -c "import json,sys; print(sorted(r['step'] for r in map(json.loads, open(sys.argv[1])) if r['kind'] == 'skip'))" "$1/metrics.jsonl"
}
test "$(skips "$tmp/straight")" = "$(skips "$tmp/split")"
skips "$tmp/split" | grep -q "26"
$py - "$tmp/split/checkpoints/step_00000030/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
assert len(m["spike_guard"]["window"]) == 8, m["spike_guard"]
assert m["step"] == 30 and m["data"]["next_step"] == 30 and m["tokens_seen"] == 30 * 8 * 32
PY

# --resume PATH from another run directory, with settings that may change:
# logging, checkpoint cadence, eval.
"$M6TRAIN" --config "$tmp/a.yaml" --run-dir "$tmp/other" \
  --resume "$tmp/split/checkpoints/step_00000030" --set log.every=5 --set checkpoint.every=3 \
  --set eval.every=4 > "$tmp/other.log"
grep -q "config changed since the checkpoint: checkpoint.every 10 -> 3" "$tmp/other.log"
same_digests "$tmp/straight/checkpoints/step_00000040" "$tmp/other/checkpoints/step_00000040"

# A longer schedule on resume is allowed (and then differs, as it should).
"$M6TRAIN" --config "$tmp/a.yaml" --run-dir "$tmp/longer" \
  --resume "$tmp/split/checkpoints/step_00000030" --set train.steps=50 > "$tmp/longer.log"
test -d "$tmp/longer/checkpoints/step_00000050"

# A run directory that holds checkpoints is not restarted by accident.
expect_rc 2 "$M6TRAIN" --config "$tmp/a.yaml" --run-dir "$tmp/split" > /dev/null 2> "$tmp/again.err"
grep -q "already holds checkpoints" "$tmp/again.err"
# A finished run resumed again does nothing and succeeds.
"$M6TRAIN" --config "$tmp/a.yaml" --run-dir "$tmp/split" --resume auto > /dev/null
# fp16 with dynamic loss scaling: growth_interval 6 makes the scale grow on
# both sides of the resume at step 20, and injected overflows at steps 13 and
# 25 make it back off on each side; the split run must match bit for bit.
write_config "$tmp/h.yaml" 40 $'checkpoint: {every: 10, keep: 2}\nprecision: {compute: fp16, loss_scale: {init: 1024, growth_interval: 6}}'
export M6_FAILPOINTS=overflow@12,overflow@24
"$M6TRAIN" --config "$tmp/h.yaml" --run-dir "$tmp/straight_h" > "$tmp/straight_h.log" 2>&1
"$M6TRAIN" --config "$tmp/h.yaml" --run-dir "$tmp/split_h" --max-steps 20 > /dev/null 2>&1
"$M6TRAIN" --config "$tmp/h.yaml" --run-dir "$tmp/split_h" --resume auto > "$tmp/split_h.log" 2>&1
grep -q "resume: step 20 from" "$tmp/split_h.log"
diff <(losses "$tmp/straight_h") <(losses "$tmp/split_h")
test "$(losses "$tmp/split_h" | wc -l)" = 40
same_digests "$tmp/straight_h/checkpoints/step_00000040" "$tmp/split_h/checkpoints/step_00000040"
test "$(skips "$tmp/straight_h")" = "[13, 25]"
test "$(skips "$tmp/split_h")" = "[13, 25]"
$py - "$tmp/straight_h" "$tmp/split_h" <<'PY'
import json, sys
def scale_events(d):
    return {r["step"]: r["loss_scale"] for r in map(json.loads, open(d + "/metrics.jsonl"))
            if r["kind"] in ("loss_scale", "skip")}
def scaler(d, step):
    return json.load(open(f"{d}/checkpoints/step_{step:08d}/manifest.json"))["loss_scaler"]
a, b = scale_events(sys.argv[1]), scale_events(sys.argv[2])
assert a == b, (a, b)
# 1024 grows after 6 clean steps (6, 12), backs off at the overflow of step 13,
# grows again 6 clean steps later (19), ...
assert a[6] == 2048 and a[12] == 4096 and a[13] == 2048 and a[19] == 4096 and a[25] == 2048, a
s = scaler(sys.argv[2], 30)
assert s["active"] and s["scale"] == 2048 and s["good_steps"] == 5, s
assert scaler(sys.argv[1], 40) == scaler(sys.argv[2], 40)
print("fp16 loss scale events:", a)
PY
unset M6_FAILPOINTS
echo "ok: bit-exact resume on 1 rank"
