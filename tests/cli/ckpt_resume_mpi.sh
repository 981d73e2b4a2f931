#!/usr/bin/env bash
# Multi-rank resume (issue items 4 and 5), under mpirun:
# - bit-exact: 4 ranks with ep = 2, 40 steps straight vs 20 + --resume auto +
#   20 give the same loss at every step and byte-identical final checkpoints;
# - another layout: a checkpoint written by 4 ranks with ep = 4 resumes on 2
#   ranks with ep = 2 and on 1 rank, and one written by 1 rank resumes on 4
#   ranks with ep = 4 and on 2 with ep = 2; the next step's loss agrees with
#   the uninterrupted run of the writing layout within 1e-5 relative, and so
#   does the one after it (which depends on the Adam moments loaded too).
source "$(dirname "$0")/ckpt_common.bash"
require_mpi 4

write_config "$tmp/r.yaml" 40 'checkpoint: {every: 10, keep: 2}'
# run NP EP RUN_DIR ARGS...: m6train on NP ranks (directly when NP is 1).
run() {
  local np=$1 ep=$2
  shift 2
  if [ "$np" = 1 ]; then
    "$M6TRAIN" --config "$tmp/r.yaml" --set parallel.ep="$ep" --run-dir "$@"
  else
    "${MPIRUN[@]}" -np "$np" "$M6TRAIN" --config "$tmp/r.yaml" --set parallel.ep="$ep" --run-dir "$@"
  fi
}

# Item 4: bit-exact on 4 ranks with ep = 2.
run 4 2 "$tmp/straight42" > "$tmp/straight42.log"
run 4 2 "$tmp/split42" --max-steps 20 > /dev/null
run 4 2 "$tmp/split42" --resume auto > "$tmp/split42.log"
grep -q "resume: step 20 from" "$tmp/split42.log"
diff <(losses "$tmp/straight42") <(losses "$tmp/split42")
same_digests "$tmp/straight42/checkpoints/step_00000040" "$tmp/split42/checkpoints/step_00000040"
echo "ok: 4 ranks, ep 2: bit-exact resume"

# loss_at RUN STEP: the loss logged for STEP (the last record of it).
loss_at() { losses "$1" | awk -v s="$2" '$1 == s { v = $2 } END { print v }'; }
# close A B: |A - B| <= 1e-5 |A|.
close() {
  $py -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a - b) > 1e-5 * abs(a))" "$1" "$2" ||
    { echo "FAIL: $3: loss $2 differs from $1 by more than 1e-5 relative" >&2; exit 1; }
}

# Item 5: written by 4 ranks with ep = 4 (the uninterrupted run gives step 21).
run 4 4 "$tmp/w44" --max-steps 22 > /dev/null
want=$(loss_at "$tmp/w44" 21) want2=$(loss_at "$tmp/w44" 22)
from="$tmp/w44/checkpoints/step_00000020"
for layout in "2 2" "1 1" "2 1"; do
  set -- $layout
  dir="$tmp/from44_on$1_ep$2"
  run "$1" "$2" "$dir" --resume "$from" --max-steps 2 > "$dir.log"
  got=$(loss_at "$dir" 21)
  close "$want" "$got" "4 ranks ep 4 -> $1 rank(s) ep $2"
  close "$want2" "$(loss_at "$dir" 22)" "4 ranks ep 4 -> $1 rank(s) ep $2, step 22"
  echo "ok: 4 ranks ep 4 -> $1 rank(s) ep $2: step 21 loss $got vs $want"
done

# And the reverse: written by 1 rank.
run 1 1 "$tmp/w11" --max-steps 22 > /dev/null
want=$(loss_at "$tmp/w11" 21) want2=$(loss_at "$tmp/w11" 22)
from="$tmp/w11/checkpoints/step_00000020"
for layout in "4 4" "2 2" "4 2"; do
  set -- $layout
  dir="$tmp/from11_on$1_ep$2"
  run "$1" "$2" "$dir" --resume "$from" --max-steps 2 > "$dir.log"
  got=$(loss_at "$dir" 21)
  close "$want" "$got" "1 rank -> $1 ranks ep $2"
  close "$want2" "$(loss_at "$dir" 22)" "1 rank -> $1 ranks ep $2, step 22"
  echo "ok: 1 rank -> $1 ranks ep $2: step 21 loss $got vs $want"
done
