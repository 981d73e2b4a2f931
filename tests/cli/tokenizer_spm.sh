#!/usr/bin/env bash
# `data build --tokenizer spm:MODEL` with a SentencePiece model trained here by
# spm_train (Debian's sentencepiece): the shard holds the tokens spm_encode
# gives for the same text line by line, its header records the model's
# vocabulary size, and a model of another vocabulary size is refused at the
# start of training (exit 3 naming both sizes).
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
command -v spm_train > /dev/null || { echo "FAIL: spm_train missing (scripts/setup.sh installs sentencepiece)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat /usr/share/games/fortunes/{fortunes,computers,science,linux} > "$tmp/all.txt"
head -c 200000 "$tmp/all.txt" > "$tmp/text.txt"
head -c 60000 /usr/share/games/fortunes/chinese >> "$tmp/text.txt"
for type in unigram bpe; do
  spm_train --input="$tmp/text.txt" --model_prefix="$tmp/$type" --vocab_size=1500 \
    --model_type=$type --character_coverage=0.995 > "$tmp/$type.train.log" 2>&1
  "$M6TRAIN" data build --tokenizer "spm:$tmp/$type.model" --input "$tmp/text.txt" \
    --output "$tmp/$type" --val-fraction 0 > "$tmp/$type.build.log"
  grep -q "vocab 1500" "$tmp/$type.build.log"
  spm_encode --model="$tmp/$type.model" --output_format=id < "$tmp/text.txt" > "$tmp/$type.ids"
  /usr/bin/python3 - "$tmp/$type/train_000000.bin" "$tmp/$type.ids" <<'PY'
import struct, sys
raw = open(sys.argv[1], "rb").read()
magic, version, count, vocab = struct.unpack("<4i", raw[:16])
assert (magic, version, vocab) == (20240520, 1, 1500), (magic, version, vocab)
got = list(struct.unpack(f"<{count}H", raw[1024:]))
want = [int(t) for line in open(sys.argv[2]) for t in line.split()]
if got != want:
    i = next(i for i, (a, b) in enumerate(zip(got + [None], want + [None])) if a != b)
    sys.exit(f"FAIL: token {i}: m6train {got[i:i+8]}, spm_encode {want[i:i+8]} "
             f"({len(got)} vs {len(want)} tokens)")
print(f"ok: {sys.argv[1]}: {count} tokens equal spm_encode's")
PY
done

"$M6TRAIN" data build --tokenizer "spm:$tmp/unigram.model" --input "$tmp/text.txt" \
  --output "$tmp/train" --val-fraction 0.1 > /dev/null
common=(--config "$M6_SOURCE_DIR/configs/tiny.yaml" --set "data.train=$tmp/train/train_*.bin"
  --set "data.val=$tmp/train/val_*.bin" --set model.d_model=32 --set model.n_heads=2
  --set model.n_layers=2 --set model.d_ff=64 --set train.seq_len=32 --set model.max_seq_len=32
  --set train.micro_batch=2 --set train.global_batch=2 --set train.threads=1 --set eval.batches=1
  --max-steps 2)
"$M6TRAIN" "${common[@]}" --set model.vocab_size=1500 --run-dir "$tmp/r1500" > "$tmp/r1500.log" 2>&1 ||
  { echo "FAIL: vocab 1500 on spm shards:" >&2; cat "$tmp/r1500.log" >&2; exit 1; }
echo "ok: model.vocab_size 1500 trains on the SentencePiece shards"
rc=0
"$M6TRAIN" "${common[@]}" --set model.vocab_size=2000 --run-dir "$tmp/r2000" > "$tmp/r2000.log" 2>&1 || rc=$?
[[ $rc == 3 ]] && grep -q "shard vocabulary size 1500 .*model.vocab_size 2000" "$tmp/r2000.log" ||
  { echo "FAIL: vocab 2000 on 1500-token shards: exit $rc:" >&2; cat "$tmp/r2000.log" >&2; exit 1; }
echo "ok: model.vocab_size 2000 on 1500-token shards: exit 3 naming both"
