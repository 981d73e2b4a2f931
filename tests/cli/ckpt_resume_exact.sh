#!/usr/bin/env bash
# Bit-exact resume on one rank (issue item 4): 40 steps straight, and 20
# steps + --resume auto + 20 more, give the same loss at every step and
# byte-identical weights and Adam moments. Also: --resume PATH, a config
# change that is allowed on resume (learning-rate schedule of a longer run,
# checkpoint cadence, logging), and the spike guard's window carried across
# the resume (a spike at step 26 is caught only if the window was restored).
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
echo "ok: bit-exact resume on 1 rank"
