#!/usr/bin/env bash
# Training on a bad token shard fails before any step with exit 3 (data error)
# and names the bad file (or the pattern that matched nothing) on stderr.
# Each corruption is made in a copy of a valid shard built by `data build`.
# Env: M6TRAIN (binary), M6_SOURCE_DIR (for configs/tiny.yaml).
set -u
: "${M6TRAIN:?M6TRAIN must point at the m6train binary}"
: "${M6_SOURCE_DIR:?M6_SOURCE_DIR must point at the source tree}"
config="$M6_SOURCE_DIR/configs/tiny.yaml"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/m6_bad_shards.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
failures=()
fail() { failures+=("$1"); echo "FAIL: $1" >&2; }

# A valid corpus, large enough for any tiny sequence length in both splits.
for i in $(seq 1 4000); do echo "line $i: the quick brown fox jumps over the lazy dog. 你好，世界。"; done >"$tmp/text.txt"
if ! "$M6TRAIN" data build --input "$tmp/text.txt" --output "$tmp/good" --val-fraction 0.1 \
  >"$tmp/build.out" 2>"$tmp/build.err"; then
  echo "bad_shards: cannot build the valid corpus: $(cat "$tmp/build.err")" >&2
  exit 1
fi
good_train="$tmp/good/train_000000.bin"
good_val="$tmp/good/val_000000.bin"

# copy_of_good NAME: copies the good train shard to $tmp/NAME/train_000000.bin and prints its path.
copy_of_good() {
  mkdir -p "$tmp/$1"
  cp "$good_train" "$tmp/$1/train_000000.bin"
  echo "$tmp/$1/train_000000.bin"
}
put_int32() {  # file byte_offset value: little-endian int32 in place
  python3 -c 'import struct,sys; f=open(sys.argv[1],"r+b"); f.seek(int(sys.argv[2])); f.write(struct.pack("<i", int(sys.argv[3])))' "$@"
}

# expect_data_error LABEL TRAIN_GLOB NAME_ON_STDERR
expect_data_error() {
  local label=$1 train=$2 name=$3 rc
  rm -rf "$tmp/run"
  "$M6TRAIN" --config "$config" --set "data.train=$train" --set "data.val=$good_val" \
    --run-dir "$tmp/run" --max-steps 1 >"$tmp/$label.out" 2>"$tmp/$label.err"
  rc=$?
  [[ $rc -eq 3 ]] || fail "$label: exit $rc, expected 3 (stderr: $(head -c 400 "$tmp/$label.err"))"
  grep -qF -- "$name" "$tmp/$label.err" || fail "$label: stderr does not name $name: $(head -c 400 "$tmp/$label.err")"
}

f=$(copy_of_good bad_magic); put_int32 "$f" 0 12345
expect_data_error bad_magic "$f" "$f"

f=$(copy_of_good bad_version); put_int32 "$f" 4 3
expect_data_error bad_version "$f" "$f"

f=$(copy_of_good truncated); truncate -s $(($(stat -c %s "$f") - 2)) "$f"
expect_data_error truncated "$f" "$f"

f=$(copy_of_good extra_bytes); printf 'xyz' >>"$f"
expect_data_error extra_bytes "$f" "$f"

f=$(copy_of_good short_header); truncate -s 100 "$f"
expect_data_error short_header "$f" "$f"

# Token 65535 at index 10: out of range for any vocab below 65536.
f=$(copy_of_good token_over_vocab); printf '\xff\xff' | dd of="$f" bs=1 seek=$((1024 + 2 * 10)) conv=notrunc status=none
expect_data_error token_over_vocab "$f" "$f"

# A valid shard of 4 tokens: too few for one sequence.
mkdir -p "$tmp/too_few"
f="$tmp/too_few/train_000000.bin"
python3 -c 'import struct,sys; open(sys.argv[1],"wb").write(struct.pack("<256i", 20240520, 1, 4, *([0]*253)) + struct.pack("<4H", 1, 2, 3, 4))' "$f"
expect_data_error too_few_tokens "$f" "$f"

pattern="$tmp/nowhere/train_*.bin"
expect_data_error no_match "$pattern" "$pattern"

# Control: the valid corpus is not a data error, so the checks above test the shards.
rm -rf "$tmp/run"
"$M6TRAIN" --config "$config" --set "data.train=$good_train" --set "data.val=$good_val" \
  --run-dir "$tmp/run" --max-steps 1 >"$tmp/control.out" 2>"$tmp/control.err"
rc=$?
[[ $rc -eq 0 ]] || fail "control (valid shards): exit $rc, expected 0 (stderr: $(head -c 400 "$tmp/control.err"))"

if [[ ${#failures[@]} -gt 0 ]]; then
  echo "bad_shards: ${#failures[@]} failure(s):" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "bad_shards: all checks passed"
