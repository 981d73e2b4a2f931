#!/usr/bin/env bash
# Builds the embedded corpus: the fortune files of Debian's fortunes and
# fortunes-zh packages (raw UTF-8 bytes) as token shards in data/fortunes/,
# unless they already exist. One definition for quickstart.sh, bench-cpu.sh and
# p2r-evidence.sh, so every script trains on the same token stream.
#
#   scripts/build-corpus.sh M6TRAIN_BINARY [OUTPUT_DIR]
set -euo pipefail
m6=${1:?usage: build-corpus.sh M6TRAIN_BINARY [OUTPUT_DIR]}
data_dir=${2:-data/fortunes}
corpus_dir=/usr/share/games/fortunes

if [[ -f $data_dir/train_000000.bin ]]; then
  echo "$data_dir/train_000000.bin exists; keeping the shards in $data_dir"
  exit 0
fi
if [[ ! -d $corpus_dir ]]; then
  echo "build-corpus: $corpus_dir not found (Debian packages fortunes, fortunes-zh)" >&2
  exit 3
fi
# Every regular text file: not the .dat indexes, not the .u8 symlinks, and no
# symlink at all (find -type f does not follow them). Sorted, so the token
# stream is the same on every machine with the same packages.
inputs=()
mapfile -d '' inputs < <(find "$corpus_dir" -type f ! -name '*.dat' ! -name '*.u8' -print0 |
  LC_ALL=C sort -z)
if ((${#inputs[@]} == 0)); then
  echo "build-corpus: no corpus files found under $corpus_dir" >&2
  exit 3
fi
echo "corpus: ${#inputs[@]} files from $corpus_dir"
"$m6" data build --input "${inputs[@]}" --output "$data_dir" --val-fraction 0.05
