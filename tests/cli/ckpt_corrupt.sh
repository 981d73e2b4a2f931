#!/usr/bin/env bash
# Damaged checkpoints (issue item 6). For each kind of damage to the newest
# checkpoint -- truncated, bit-flipped, missing and extra file, a manifest that
# is not JSON or lacks a field, a future format version, a tensor whose shape
# does not match the config -- --resume PATH is an error naming the file (exit
# code 4), and --resume auto reports it, falls back to the previous committed
# checkpoint and still ends byte-identical to an undamaged run. A config that
# conflicts with the checkpoint (model shape) and a missing path are errors
# too, with no fallback.
source "$(dirname "$0")/ckpt_common.bash"

write_config "$tmp/c.yaml" 20 'checkpoint: {every: 10, keep: 3}'
"$M6TRAIN" --config "$tmp/c.yaml" --run-dir "$tmp/good" > /dev/null
good="$tmp/good/checkpoints/step_00000020"

# damage NAME: copies the good run and damages its step_20; prints the file
# the error must name.
damage() {
  local run="$tmp/run_$1" d="$tmp/run_$1/checkpoints/step_00000020"
  rm -rf "$run"
  cp -r "$tmp/good" "$run"
  case $1 in
    truncated)
      truncate -s -16 "$d/experts-ep0.adam_v.safetensors"
      echo "$d/experts-ep0.adam_v.safetensors" ;;
    bitflip)
      $py - "$d/dense.weights.safetensors" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[-5] ^= 0x04
open(p, "wb").write(bytes(b))
PY
      echo "$d/dense.weights.safetensors" ;;
    missing)
      rm "$d/dense.adam_m.safetensors"
      echo "$d/dense.adam_m.safetensors" ;;
    extra)
      echo stray > "$d/notes.txt"
      echo "$d/notes.txt" ;;
    notjson)
      head -c 100 "$d/manifest.json" > "$d/m" && mv "$d/m" "$d/manifest.json"
      echo "$d/manifest.json" ;;
    nofield)
      $py -c "import json,sys; m=json.load(open(sys.argv[1])); del m['tokens_seen']; json.dump(m, open(sys.argv[1],'w'))" "$d/manifest.json"
      echo "$d/manifest.json" ;;
    future)
      $py -c "import json,sys; m=json.load(open(sys.argv[1])); m['format_version'] += 1; json.dump(m, open(sys.argv[1],'w'))" "$d/manifest.json"
      echo "$d/manifest.json" ;;
    shape)
      # ln_f.weight [32] rewritten as [4,8] -- same bytes, valid file, manifest
      # digests updated: only the shape check can refuse it.
      $py - "$d" <<'PY'
import hashlib, json, struct, sys
d = sys.argv[1]
p = d + "/dense.weights.safetensors"
raw = open(p, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
hdr["ln_f.weight"]["shape"] = [4, 8]
h = json.dumps(hdr, separators=(",", ":")).encode()
h += b" " * (n - len(h))
assert len(h) == n
out = raw[:8] + h + raw[8 + n:]
open(p, "wb").write(out)
m = json.load(open(d + "/manifest.json"))
m["files"]["dense.weights.safetensors"]["sha256"] = hashlib.sha256(out).hexdigest()
json.dump(m, open(d + "/manifest.json", "w"))
PY
      echo "$d/dense.weights.safetensors" ;;
  esac
}

for kind in truncated bitflip missing extra notjson nofield future shape; do
  file=$(damage $kind)
  run="$tmp/run_$kind"
  expect_rc 4 "$M6TRAIN" --config "$tmp/c.yaml" --run-dir "$tmp/path_$kind" \
    --resume "$run/checkpoints/step_00000020" > /dev/null 2> "$tmp/$kind.err"
  if ! grep -qF "$file" "$tmp/$kind.err"; then
    echo "FAIL ($kind): the error does not name $file:" >&2
    cat "$tmp/$kind.err" >&2
    exit 1
  fi
  # auto: reported, set aside, the run continues from step 10 to a final
  # checkpoint identical to the undamaged run's.
  "$M6TRAIN" --config "$tmp/c.yaml" --run-dir "$run" --resume auto > "$tmp/$kind.out" 2> "$tmp/$kind.auto.err"
  grep -q "step_00000020 is unusable" "$tmp/$kind.auto.err"
  grep -q "resume: step 10 from" "$tmp/$kind.out"
  test -d "$run/checkpoints/step_00000020.corrupt"
  same_digests "$good" "$run/checkpoints/step_00000020"
  echo "ok: $kind -> exit 4 naming $(basename "$file"); auto fell back to step 10"
done

# Every committed checkpoint damaged: auto is an error, not a fresh start.
run="$tmp/run_all"
cp -r "$tmp/good" "$run"
for d in "$run"/checkpoints/step_*; do rm "$d/dense.weights.safetensors"; done
expect_rc 4 "$M6TRAIN" --config "$tmp/c.yaml" --run-dir "$run" --resume auto > /dev/null 2> "$tmp/all.err"
grep -q "no committed checkpoint of .* loads" "$tmp/all.err"

# A config whose model differs from the checkpoint's: exit 4 naming the key.
expect_rc 4 "$M6TRAIN" --config "$tmp/c.yaml" --run-dir "$tmp/conflict" --resume "$good" \
  --set model.d_ff=128 > /dev/null 2> "$tmp/conflict.err"
grep -q "manifest.json: .*model.d_ff 64 -> 128" "$tmp/conflict.err"

# Missing and uncommitted paths.
expect_rc 4 "$M6TRAIN" --config "$tmp/c.yaml" --run-dir "$tmp/x" --resume "$tmp/nowhere" \
  > /dev/null 2> "$tmp/nowhere.err"
grep -qF "$tmp/nowhere" "$tmp/nowhere.err"
mkdir -p "$tmp/good/checkpoints/step_00000030.tmp"
expect_rc 4 "$M6TRAIN" --config "$tmp/c.yaml" --run-dir "$tmp/x" \
  --resume "$tmp/good/checkpoints/step_00000030.tmp" > /dev/null 2> "$tmp/tmpdir.err"
grep -q "uncommitted" "$tmp/tmpdir.err"
echo "ok: damaged checkpoints"
