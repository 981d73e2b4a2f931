#!/usr/bin/env bash
# Every bad config must be refused before anything starts: m6train exits with
# exactly 2 (config error), stderr names the offending key (the file's
# "# expect: KEY" header) and the file, and the run directory holds no
# metrics.jsonl. Also checks bad --set overrides on top of a valid config.
# Env (set by CTest): M6TRAIN = the binary, M6_SOURCE_DIR = the source tree.
set -u

: "${M6TRAIN:?M6TRAIN must name the m6train binary}"
: "${M6_SOURCE_DIR:?M6_SOURCE_DIR must name the source tree}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=()
n=0

# expect_refused LABEL RUN_DIR "TEXT..." -- ARGS...: runs m6train ARGS and
# checks exit code 2, every TEXT in stderr, and no metrics.jsonl in RUN_DIR.
expect_refused() {
  local label=$1 run_dir=$2
  shift 2
  local -a texts=()
  while [[ $# -gt 0 && $1 != -- ]]; do texts+=("$1"); shift; done
  shift  # the --
  local err="$tmp/stderr.$n" rc=0
  timeout 120 "$M6TRAIN" "$@" >"$tmp/stdout.$n" 2>"$err" </dev/null || rc=$?
  local why=()
  [[ $rc -eq 2 ]] || why+=("exit code $rc, expected 2")
  for t in "${texts[@]}"; do
    grep -qF -- "$t" "$err" || why+=("stderr lacks '$t'")
  done
  if [[ -n $(find "$run_dir" -name metrics.jsonl 2>/dev/null) ]]; then
    why+=("$run_dir holds a metrics.jsonl: training started")
  fi
  if [[ ${#why[@]} -gt 0 ]]; then
    failures+=("$label: $(IFS=';'; echo "${why[*]}")")
    echo "FAIL $label: ${why[*]}"
    sed 's/^/    stderr: /' "$err" | head -5
  else
    echo "ok   $label"
  fi
  n=$((n + 1))
}

# ---- the bad files ---------------------------------------------------------------
count=0
for f in "$M6_SOURCE_DIR"/tests/cli/bad_configs/*.yaml; do
  name=$(basename "$f")
  expect=$(sed -n 's/^# expect: //p' "$f" | head -1)
  if [[ -z $expect ]]; then
    failures+=("$name: no '# expect: KEY' header")
    continue
  fi
  expect_refused "$name" "$tmp/run-$n" "$expect" "$name" -- --config "$f" --run-dir "$tmp/run-$n"
  count=$((count + 1))
done
if [[ $count -lt 25 ]]; then
  failures+=("only $count bad config files found under $M6_SOURCE_DIR/tests/cli/bad_configs (want >= 25)")
fi

# ---- bad --set overrides on a valid base config ----------------------------------
base="$tmp/base.yaml"
cat >"$base" <<EOF
model:
  vocab_size: 256
  max_seq_len: 32
  d_model: 32
  n_heads: 2
  n_layers: 2
  d_ff: 64
data:
  train: $tmp/no-data/train_*.bin
  val: $tmp/no-data/val_*.bin
train:
  steps: 2
  seq_len: 16
  micro_batch: 2
  global_batch: 2
  device: cpu
EOF
expect_refused "--set unknown key" "$tmp/run-$n" "model.d_modle" "--set model.d_modle=64" \
  -- --config "$base" --run-dir "$tmp/run-$n" --set model.d_modle=64
expect_refused "--set wrong type" "$tmp/run-$n" "train.steps" "--set train.steps=abc" \
  -- --config "$base" --run-dir "$tmp/run-$n" --set train.steps=abc
expect_refused "--set without =" "$tmp/run-$n" "--set train.steps" "malformed" \
  -- --config "$base" --run-dir "$tmp/run-$n" --set train.steps

echo
if [[ ${#failures[@]} -gt 0 ]]; then
  echo "${#failures[@]} failure(s):"
  printf '  %s\n' "${failures[@]}"
  exit 1
fi
echo "all $n cases refused as expected"
