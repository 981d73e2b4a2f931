#!/usr/bin/env bash
# Whole-model reference check (DESIGN.md section 8): for every config in
# tests/ref/configs/, `m6train debug-step` writes its weights, batch, loss and
# gradients, and tests/ref/check_step.py recomputes them with the independent
# PyTorch model (float32 and float64) and compares. A config whose file holds a
# line "# check_step: ARGS" passes ARGS on (e.g. --expect-drops, which fails the
# check if the reference drops no slot, so a capacity test cannot pass
# vacuously). Needs M6TRAIN and M6_SOURCE_DIR (set by ctest).
set -u -o pipefail

: "${M6TRAIN:?M6TRAIN must name the m6train binary}"
: "${M6_SOURCE_DIR:?M6_SOURCE_DIR must name the source tree}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
PY=/usr/bin/python3
REF="$M6_SOURCE_DIR/tests/ref"

if ! "$PY" -c 'import torch, numpy' 2>/dev/null; then
  echo "torch_reference: $PY cannot import torch and numpy (apt install python3-torch)" >&2
  exit 1
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/m6_torch_ref.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# The reference must pass its own checks (gradcheck, torch.nn equivalence,
# hand-worked routing examples, check_step on perturbed data) before it judges
# m6train.
if ! "$PY" "$REF/self_test.py" >"$TMP/self_test.log" 2>&1; then
  echo "torch_reference: FAIL: the reference's own self-test fails:" >&2
  cat "$TMP/self_test.log" >&2
  exit 1
fi

inputs=("${M6_CORPUS[@]}" /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0)
if ! "$M6TRAIN" data build --input "${inputs[@]}" --output "$TMP/data" >"$TMP/data.log" 2>&1; then
  echo "torch_reference: FAIL: m6train data build failed:" >&2
  cat "$TMP/data.log" >&2
  exit 1
fi

failures=0
checked=0
for cfg in "$REF"/configs/*.yaml; do
  name=$(basename "$cfg" .yaml)
  out="$TMP/$name"
  checked=$((checked + 1))
  echo "=== $name"
  if ! "$M6TRAIN" debug-step --config "$cfg" \
      --set data.train="$TMP/data/train_*.bin" --set data.val="$TMP/data/val_*.bin" \
      --out "$out" >"$TMP/$name.log" 2>&1; then
    echo "FAIL $name: m6train debug-step exited non-zero:"
    cat "$TMP/$name.log"
    failures=$((failures + 1))
    continue
  fi
  # Extra check_step arguments declared by the config itself.
  read -r -a extra <<<"$(sed -n 's/^# check_step:[[:space:]]*//p' "$cfg" | tr '\n' ' ')"
  if "$PY" "$REF/check_step.py" --both "${extra[@]}" "$out"; then
    echo "PASS $name"
  else
    echo "FAIL $name"
    failures=$((failures + 1))
  fi
done

if [[ $checked -eq 0 ]]; then
  echo "torch_reference: FAIL: no config under $REF/configs" >&2
  exit 1
fi
echo "torch_reference: $((checked - failures)) of $checked configs pass"
[[ $failures -eq 0 ]]
