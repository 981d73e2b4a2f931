# shellcheck shell=bash
# Sourced by the CLI tests that compare two runs' checkpoints (not a test
# itself: CTest runs only *.sh).
# same_checkpoint_files A B LABEL: every tensor file (weights, Adam moments)
# of checkpoint directory A equal byte for byte to B's; prints "LABEL (N
# files)". A difference (cmp) or a directory without tensor files fails the
# test.
same_checkpoint_files() {
  local f n=0
  for f in "$1"/*.safetensors; do
    cmp "$f" "$2/$(basename "$f")"
    n=$((n + 1))
  done
  [[ $n -gt 0 ]] || { echo "no checkpoint files in $1" >&2; exit 1; }
  echo "$3 ($n files)"
}
