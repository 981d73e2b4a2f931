#!/usr/bin/env bash
# scripts/plot-run.py on two short runs: writes <run>/loss.png by default (or
# -o), a real PNG of the expected size with drawn curves (not a blank
# canvas), and exits 3 naming a directory without metrics.jsonl.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
py=/usr/bin/python3
plot="$M6_SOURCE_DIR/scripts/plot-run.py"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" --output "$tmp/data" \
  --val-fraction 0.1 >/dev/null
for seed in 1 2; do
  cat > "$tmp/c$seed.yaml" <<YAML
model: {vocab_size: 256, max_seq_len: 16, d_model: 16, n_heads: 2, n_layers: 2, d_ff: 32,
        moe: {every: 2, experts: 2}}
data: {train: $tmp/data/train_*.bin, val: $tmp/data/val_*.bin}
train: {steps: 8, seq_len: 16, micro_batch: 2, global_batch: 2, threads: 1, seed: $seed, peak_tflops: 1}
optim: {warmup_steps: 2}
eval: {every: 4, batches: 1}
log: {every: 1}
YAML
  "$M6TRAIN" --config "$tmp/c$seed.yaml" --run-dir "$tmp/run$seed" >/dev/null
done

"$py" "$plot" "$tmp/run1"
"$py" "$plot" "$tmp/run1" "$tmp/run2" -o "$tmp/both.png" --title "two seeds"
"$py" - "$tmp/run1/loss.png" "$tmp/both.png" <<'PY'
import sys
import matplotlib.image as mpimg
import numpy as np
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    img = mpimg.imread(path)
    assert img.shape[:2] == (800, 1200), (path, img.shape)
    rgb = img[..., :3]
    drawn = np.mean(np.any(rgb < 0.9, axis=-1))  # non-white: axes, text and curves
    # Curves are coloured; axes, ticks and text are grey or black.
    curves = np.mean(rgb.max(axis=-1) - rgb.min(axis=-1) > 0.3)
    print(f"{path}: {drawn:.2%} drawn, {curves:.2%} in colour")
    assert drawn > 0.01, f"{path}: almost blank ({drawn:.2%} drawn)"
    assert curves > 0.002, f"{path}: no curves ({curves:.3%} coloured pixels)"
PY

rc=0
"$py" "$plot" "$tmp/nothing" 2>"$tmp/err" || rc=$?
[[ $rc -eq 3 ]] || { echo "missing run dir: exit $rc, expected 3" >&2; exit 1; }
grep -q "$tmp/nothing" "$tmp/err"
echo ok
