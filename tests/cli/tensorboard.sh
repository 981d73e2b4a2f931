#!/usr/bin/env bash
# log.tensorboard: true writes <run>/tb event files that the real `tensorboard`
# package (PyPI, in the venv scripts/setup.sh makes at <build>/venv) reads
# back: every record passes its CRC checks, every scalar equals its twin in
# metrics.jsonl (as fp32), the expert-load histograms equal expert_load, and a
# resumed run adds a second event file that continues the first. A flipped
# byte must make TensorBoard's reader report data loss.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}" "${M6_BUILD_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
# setup.sh makes it at <repo>/build/venv; another build directory (build-asan)
# uses that one unless it has its own.
venv_dir=${M6_VENV:-$M6_BUILD_DIR/venv}
[[ -n ${M6_VENV:-} || -x $venv_dir/bin/python ]] || venv_dir=$M6_SOURCE_DIR/build/venv
venv_py=$venv_dir/bin/python
if [[ ! -x $venv_py ]] || ! "$venv_py" -c 'import tensorboard' 2>/dev/null; then
  echo "tensorboard.sh: no venv with the tensorboard package at ${venv_py%/bin/python};" \
    "run scripts/setup.sh (it creates it) or set M6_VENV" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" /usr/share/common-licenses/GPL-3 \
  --output "$tmp/data" --val-fraction 0.1 >/dev/null

cat > "$tmp/tb.yaml" <<YAML
model:
  vocab_size: 256
  max_seq_len: 32
  d_model: 32
  n_heads: 2
  n_layers: 4
  d_ff: 64
  moe: {every: 2, experts: 4, top_k: 2, capacity_factor: 1.0}
data:
  train: $tmp/data/train_*.bin
  val: $tmp/data/val_*.bin
train: {steps: 30, seq_len: 32, micro_batch: 4, global_batch: 8, threads: 1, peak_tflops: 0.05}
optim: {lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5}
eval: {every: 10, batches: 2}
log: {every: 5, tensorboard: true}
YAML

"$M6TRAIN" --config "$tmp/tb.yaml" --run-dir "$tmp/run" --max-steps 20 >/dev/null
sleep 1  # the second event file gets a later timestamp in its name
"$M6TRAIN" --config "$tmp/tb.yaml" --run-dir "$tmp/run" --resume auto >/dev/null

"$venv_py" - "$tmp/run" <<'PY'
import glob, json, math, os, shutil, sys
import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

run = sys.argv[1]
files = sorted(glob.glob(f"{run}/tb/events.out.tfevents.*"))
assert len(files) == 2, f"expected one event file per invocation, got {files}"

def records(path):
    r = pywrap_tensorflow.PyRecordReader_New(path, 0, None, None)
    out = []
    while True:
        try:
            r.GetNext()
        except errors.OutOfRangeError:
            return out
        out.append(r.record())

# Every record passes TensorBoard's own CRC32C checks.
n_records = sum(len(records(f)) for f in files)
# A flipped payload byte is caught.
bad = f"{run}/bad.tfevents"
shutil.copy(files[0], bad)
with open(bad, "r+b") as f:
    f.seek(60)
    b = f.read(1)
    f.seek(60)
    f.write(bytes([b[0] ^ 0x10]))
try:
    records(bad)
    raise AssertionError("a corrupted event file read without a CRC error")
except errors.DataLossError as e:
    print("corrupted copy refused:", e)
os.remove(bad)

acc = event_accumulator.EventAccumulator(f"{run}/tb", size_guidance={"scalars": 0, "histograms": 0})
acc.Reload()
tags = acc.Tags()
recs = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
train = {r["step"]: r for r in recs if r["kind"] == "train"}
evals = {r["step"]: r for r in recs if r["kind"] == "eval"}
assert sorted(train) == [5, 10, 15, 20, 25, 30], sorted(train)
assert sorted(evals) == [0, 10, 20, 30], sorted(evals)

want = {f"train/{k}" for k in ["loss", "lr", "grad_norm", "tokens_per_s", "mfu", "loss_scale",
                               "dropped_frac", "aux_loss", "z_loss"]} | {"eval/eval_loss"}
assert set(tags["scalars"]) == want, set(tags["scalars"]) ^ want
compared = 0
for tag in tags["scalars"]:
    kind, field = tag.split("/", 1)
    by_step = train if kind == "train" else evals
    events = acc.Scalars(tag)
    assert [e.step for e in events] == sorted(by_step), (tag, [e.step for e in events])
    for e in events:
        v = by_step[e.step][field]
        if v is None:
            assert math.isnan(e.value), (tag, e.step, e.value)
        else:
            assert np.float32(v) == np.float32(e.value), (tag, e.step, v, e.value)
        compared += 1
print(f"{compared} scalars equal metrics.jsonl")
mfu = [e.value for e in acc.Scalars("train/mfu")]
assert all(0 < m < 10 for m in mfu), mfu  # against a 0.05 TFLOP/s peak

# Expert load: MoE layers 1 and 3, bucket e = tokens of expert e.
assert sorted(tags["histograms"]) == ["expert_load/layer_1", "expert_load/layer_3"], tags["histograms"]
for i, layer in enumerate([1, 3]):
    events = acc.Histograms(f"expert_load/layer_{layer}")
    assert [e.step for e in events] == sorted(train)
    for e in events:
        h = e.histogram_value
        load = train[e.step]["expert_load"][i]
        assert list(h.bucket) == load, (layer, e.step, list(h.bucket), load)
        assert list(h.bucket_limit) == [0.5, 1.5, 2.5, 3.5]
        assert h.num == sum(load) and h.sum == sum(e_ * n for e_, n in enumerate(load))
print(f"ok: {n_records} records in {len(files)} files, histograms of layers 1 and 3 match")
PY
