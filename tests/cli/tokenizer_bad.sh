#!/usr/bin/env bash
# Bad tokenizer input to `data build` is a clear error with its exit code,
# never a crash: an unknown --tokenizer or gpt2 without a directory is a usage
# error (2); a missing, unreadable or corrupt vocabulary, merge list or
# SentencePiece model is a data error (3) naming the file. Nothing is written
# to --output then. Uses a hand-made GPT-2-style vocabulary (no network).
set -uo pipefail
: "${M6TRAIN:?}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
echo "hello world" > "$tmp/in.txt"

# expect CODE NAME_IN_STDERR LABEL SPEC: data build with --tokenizer SPEC.
expect() {
  local want=$1 name=$2 label=$3 spec=$4 rc=0
  rm -rf "$tmp/out"
  env -u M6_GPT2_DIR "$M6TRAIN" data build --tokenizer "$spec" --input "$tmp/in.txt" \
    --output "$tmp/out" > "$tmp/$label.out" 2> "$tmp/$label.err" || rc=$?
  if [[ $rc != "$want" ]]; then
    echo "FAIL: $label: exit $rc, expected $want: $(head -c 300 "$tmp/$label.err")" >&2
    failures=$((failures + 1))
  elif ! grep -qF -- "$name" "$tmp/$label.err"; then
    echo "FAIL: $label: stderr does not name '$name': $(head -c 300 "$tmp/$label.err")" >&2
    failures=$((failures + 1))
  elif [[ -e $tmp/out/train_000000.bin ]]; then
    echo "FAIL: $label: a shard was written" >&2
    failures=$((failures + 1))
  else
    echo "ok: $label: exit $rc: $(grep -m1 . "$tmp/$label.err" | head -c 200)"
  fi
}

# A valid tiny byte-level BPE vocabulary: 256 byte tokens in GPT-2's
# alphabet, plus "he" "ll" "hell" "hello".
/usr/bin/python3 - "$tmp/ok" << 'PY'
import json, os, sys
d = sys.argv[1]; os.makedirs(d)
bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs: bs.append(b); cs.append(256 + n); n += 1
u = {b: chr(c) for b, c in zip(bs, cs)}
enc = {u[b]: b for b in range(256)}
merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o")]
for a, b in merges: enc[a + b] = len(enc)
json.dump(enc, open(f"{d}/encoder.json", "w"))
open(f"{d}/vocab.bpe", "w").write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
PY
rc=0
"$M6TRAIN" data build --tokenizer "gpt2:$tmp/ok" --input "$tmp/in.txt" --output "$tmp/good" \
  --val-fraction 0 > "$tmp/good.log" 2>&1 || rc=$?
[[ $rc == 0 ]] && grep -q "vocab 260" "$tmp/good.log" && echo "ok: the hand-made vocabulary works" ||
  { echo "FAIL: the hand-made vocabulary: exit $rc: $(cat "$tmp/good.log")" >&2; failures=$((failures + 1)); }

rc=0
M6_GPT2_DIR="$tmp/ok" "$M6TRAIN" data build --tokenizer gpt2 --input "$tmp/in.txt" \
  --output "$tmp/env" --val-fraction 0 > "$tmp/env.log" 2>&1 || rc=$?
[[ $rc == 0 ]] && cmp -s "$tmp/env/train_000000.bin" "$tmp/good/train_000000.bin" &&
  echo "ok: --tokenizer gpt2 reads the vocabulary from M6_GPT2_DIR" ||
  { echo "FAIL: --tokenizer gpt2 with M6_GPT2_DIR: exit $rc: $(cat "$tmp/env.log")" >&2; failures=$((failures + 1)); }
# "hello world": "hello" is one token (259), " world" is bytes.
/usr/bin/python3 - "$tmp/good/train_000000.bin" << 'PY' || failures=$((failures + 1))
import struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<i", raw[8:12])[0]
got = list(struct.unpack(f"<{n}H", raw[1024:]))
# ids of single bytes are the bytes themselves in the hand-made vocabulary
want = [259] + [ord(c) for c in " world\n"]
if got != want:
    sys.exit(f"FAIL: hello world -> {got}, expected {want}")
print("ok: the hand-made merges apply: hello world ->", got)
PY

expect 2 "--tokenizer 'words'" unknown_tokenizer words
expect 2 "M6_GPT2_DIR" gpt2_without_dir gpt2
expect 2 "--tokenizer 'spm:'" spm_without_model "spm:"
expect 3 "$tmp/nowhere" gpt2_missing_dir "gpt2:$tmp/nowhere"

mkdir "$tmp/no_merges"
cp "$tmp/ok/encoder.json" "$tmp/no_merges/"
expect 3 "vocab.bpe or merges.txt" gpt2_no_merges "gpt2:$tmp/no_merges"

mkdir "$tmp/truncated"
cp "$tmp/ok/vocab.bpe" "$tmp/truncated/"
head -c 500 "$tmp/ok/encoder.json" > "$tmp/truncated/encoder.json"
expect 3 "$tmp/truncated/encoder.json" gpt2_truncated_json "gpt2:$tmp/truncated"

mkdir "$tmp/notbyte"
cp "$tmp/ok/vocab.bpe" "$tmp/notbyte/"
echo '{"a": 0, "b": 1}' > "$tmp/notbyte/encoder.json"
expect 3 "byte 0 has no token" gpt2_not_byte_level "gpt2:$tmp/notbyte"

mkdir "$tmp/dupid"
cp "$tmp/ok/vocab.bpe" "$tmp/dupid/"
sed 's/"hello": 259/"hello": 258/' "$tmp/ok/encoder.json" > "$tmp/dupid/encoder.json"
expect 3 "id 258 is given to two tokens" gpt2_duplicate_id "gpt2:$tmp/dupid"

mkdir "$tmp/badmerge"
cp "$tmp/ok/encoder.json" "$tmp/badmerge/"
printf '#version: 0.2\nh e\nw o\n' > "$tmp/badmerge/vocab.bpe"
expect 3 "$tmp/badmerge/vocab.bpe:3" gpt2_merge_unknown_token "gpt2:$tmp/badmerge"

mkdir "$tmp/badline"
cp "$tmp/ok/encoder.json" "$tmp/badline/"
printf '#version: 0.2\nh e\nhe ll o\n' > "$tmp/badline/vocab.bpe"
expect 3 "$tmp/badline/vocab.bpe:3" gpt2_merge_three_tokens "gpt2:$tmp/badline"

expect 3 "$tmp/missing.model" spm_missing "spm:$tmp/missing.model"
head -c 3000 /dev/urandom > "$tmp/random.model"
expect 3 "$tmp/random.model" spm_random_bytes "spm:$tmp/random.model"
: > "$tmp/empty.model"
expect 3 "$tmp/empty.model" spm_empty "spm:$tmp/empty.model"
expect 3 "$tmp/ok" spm_directory "spm:$tmp/ok"
if command -v spm_train > /dev/null; then
  for i in $(seq 300); do echo "line $i of a small corpus for a small model"; done > "$tmp/c.txt"
  spm_train --input="$tmp/c.txt" --model_prefix="$tmp/sp" --vocab_size=40 --hard_vocab_limit=false > /dev/null 2>&1
  head -c $(($(stat -c %s "$tmp/sp.model") / 2)) "$tmp/sp.model" > "$tmp/half.model"
  expect 3 "$tmp/half.model" spm_truncated "spm:$tmp/half.model"
fi

# Shards whose recorded vocabulary disagrees with the model: exit 3 at start,
# naming both sizes; and shards of two tokenizers in one data set.
: "${M6_SOURCE_DIR:?}"
for i in $(seq 200); do echo "hello hello world $i"; done > "$tmp/hello.txt"
"$M6TRAIN" data build --tokenizer "gpt2:$tmp/ok" --input "$tmp/hello.txt" --output "$tmp/v260" \
  --val-fraction 0.2 > /dev/null
"$M6TRAIN" data build --input "$tmp/hello.txt" --output "$tmp/v256" --val-fraction 0.2 > /dev/null
cp "$tmp/v256/train_000000.bin" "$tmp/v260/train_000001.bin"
# train_check LABEL VOCAB TRAIN_GLOB WANT_RC TEXT
train_check() {
  local rc=0
  "$M6TRAIN" --config "$M6_SOURCE_DIR/configs/tiny.yaml" --set "data.train=$3" \
    --set "data.val=$tmp/v260/val_*.bin" --set model.vocab_size=$2 --set train.seq_len=16 \
    --set train.micro_batch=1 --set train.global_batch=1 --set train.threads=1 \
    --set eval.batches=1 --max-steps 1 --run-dir "$tmp/run_$1" > "$tmp/$1.log" 2>&1 || rc=$?
  if [[ $rc != "$4" ]] || ! grep -q -- "$5" "$tmp/$1.log"; then
    echo "FAIL: $1: exit $rc, expected $4 and '$5': $(tail -n 3 "$tmp/$1.log")" >&2
    failures=$((failures + 1))
  else
    echo "ok: $1: exit $rc: $(grep -m1 -o -- "$5.*" "$tmp/$1.log" | head -c 160)"
  fi
}
train_check vocab_mismatch 256 "$tmp/v260/train_000000.bin" 3 "shard vocabulary size 260 .*model.vocab_size 256"
train_check mixed_tokenizers 260 "$tmp/v260/train_*.bin" 3 "train_000001.bin: shard vocabulary size 256 .*model.vocab_size 260"
train_check vocab_match 260 "$tmp/v260/train_000000.bin" 0 "done: 1 steps"

if ((failures > 0)); then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "ok: bad tokenizer input"
