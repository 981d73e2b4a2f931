#!/usr/bin/env bash
# `m6train data build`: two small text files -> train/val shards whose sizes
# follow from the inputs (1024-byte header + 2 bytes per token; the last
# floor(0.1 * size) bytes of each file go to val); a missing input is a data
# error (exit 3) that names the file.
# Env: M6TRAIN (the binary under test).
set -u
: "${M6TRAIN:?M6TRAIN must point at the m6train binary}"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/m6_data_build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
failures=()
fail() { failures+=("$1"); echo "FAIL: $1" >&2; }

a="$tmp/a.txt"
b="$tmp/b.txt"
for i in $(seq 1 40); do echo "line $i: the quick brown fox jumps over the lazy dog"; done >"$a"
for i in $(seq 1 25); do echo "第 $i 行：混合专家模型在千卡上学习语言。"; done >"$b"
size_a=$(stat -c %s "$a")
size_b=$(stat -c %s "$b")
# floor(0.1 * n) == n / 10 in integers: the double 0.1 is a hair above 1/10,
# so the product never rounds below an integer it should reach.
val=$((size_a / 10 + size_b / 10))
train=$((size_a + size_b - val))

out="$tmp/corpus"
"$M6TRAIN" data build --input "$a" "$b" --output "$out" --val-fraction 0.1 \
  >"$tmp/build.out" 2>"$tmp/build.err"
rc=$?
if [[ $rc -ne 0 ]]; then
  fail "data build exited $rc, expected 0: $(cat "$tmp/build.err")"
fi

check_shard() {  # path tokens
  local path=$1 tokens=$2
  if [[ ! -f "$path" ]]; then
    fail "$path was not written"
    return
  fi
  local want=$((1024 + 2 * tokens)) got
  got=$(stat -c %s "$path")
  [[ "$got" -eq "$want" ]] || fail "$path is $got bytes, expected $want (1024 + 2*$tokens)"
  # Header: magic 20240520, version 1, token count.
  local header
  header=$(od -An -t d4 -N 12 "$path" | tr -s ' ' | sed 's/^ //')
  [[ "$header" == "20240520 1 $tokens" ]] || fail "$path header is '$header', expected '20240520 1 $tokens'"
}
check_shard "$out/train_000000.bin" "$train"
check_shard "$out/val_000000.bin" "$val"
[[ ! -e "$out/train_000001.bin" ]] || fail "a second train shard was written for $train tokens"

# The train shard holds each file's head, byte for byte (tokens are bytes as uint16).
if [[ -f "$out/train_000000.bin" ]]; then
  head_a=$(head -c $((size_a - size_a / 10)) "$a" | od -An -v -t u1 | tr -s ' \n' ' ')
  got_a=$(od -An -v -t u2 -j 1024 -N $((2 * (size_a - size_a / 10))) "$out/train_000000.bin" |
    tr -s ' \n' ' ')
  [[ "$head_a" == "$got_a" ]] || fail "train shard does not start with the bytes of $a"
fi

# A missing input: exit 3, the file named on stderr.
missing="$tmp/does_not_exist.txt"
"$M6TRAIN" data build --input "$a" "$missing" --output "$tmp/corpus2" --val-fraction 0.1 \
  >"$tmp/missing.out" 2>"$tmp/missing.err"
rc=$?
[[ $rc -eq 3 ]] || fail "missing input: exit $rc, expected 3"
grep -qF "$missing" "$tmp/missing.err" || fail "missing input: stderr does not name $missing: $(cat "$tmp/missing.err")"

# val-fraction out of range is a usage error (exit 2).
"$M6TRAIN" data build --input "$a" --output "$tmp/corpus3" --val-fraction 0.9 \
  >/dev/null 2>"$tmp/range.err"
rc=$?
[[ $rc -eq 2 ]] || fail "--val-fraction 0.9: exit $rc, expected 2"

if [[ ${#failures[@]} -gt 0 ]]; then
  echo "data_build: ${#failures[@]} failure(s):" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "data_build: all checks passed"
