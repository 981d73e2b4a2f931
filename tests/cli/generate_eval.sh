#!/usr/bin/env bash
# m6train generate and eval on a short run: a seed gives the same sample, the
# output is valid UTF-8 starting with the prompt, generation goes past the
# context, eval --batches reproduces the run's last eval loss, and bad input
# fails with its exit code: no checkpoint (4), invalid UTF-8 prompt (2),
# missing data (3).
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
py=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" /usr/share/common-licenses/GPL-3 \
  --output "$tmp/data" --val-fraction 0.1 >/dev/null
cat > "$tmp/g.yaml" <<YAML
model:
  vocab_size: 256
  max_seq_len: 32
  d_model: 32
  n_heads: 2
  n_layers: 2
  d_ff: 64
  moe: {every: 2, experts: 4, top_k: 2}
data: {train: $tmp/data/train_*.bin, val: $tmp/data/val_*.bin}
train: {steps: 30, seq_len: 32, micro_batch: 4, global_batch: 8, threads: 1, peak_tflops: 1}
optim: {lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5}
eval: {every: 0, batches: 3}
log: {every: 10}
YAML
"$M6TRAIN" --config "$tmp/g.yaml" --run-dir "$tmp/run" >/dev/null

gen() { "$M6TRAIN" generate --run-dir "$tmp/run" "$@"; }
gen --seed 5 --tokens 100 --prompt "The licence" >"$tmp/a.txt" 2>"$tmp/a.err"
gen --seed 5 --tokens 100 --prompt "The licence" >"$tmp/b.txt" 2>/dev/null
gen --seed 6 --tokens 100 --prompt "The licence" >"$tmp/c.txt" 2>/dev/null
cmp "$tmp/a.txt" "$tmp/b.txt"
! cmp -s "$tmp/a.txt" "$tmp/c.txt" || { echo "seeds 5 and 6 gave the same sample" >&2; exit 1; }
grep -q "100 generated" "$tmp/a.err"
grep -q "context shifted" "$tmp/a.err"  # 11 prompt + 100 tokens > 32 positions
# Greedy ignores the seed; a multi-byte prompt is fine.
gen --temperature 0 --seed 1 --tokens 40 --prompt "héllo wörld" >"$tmp/g1.txt" 2>/dev/null
gen --temperature 0 --seed 2 --tokens 40 --prompt "héllo wörld" >"$tmp/g2.txt" 2>/dev/null
cmp "$tmp/g1.txt" "$tmp/g2.txt"
gen --top-k 1 --temperature 2 --seed 3 --tokens 40 --prompt "héllo wörld" >"$tmp/g3.txt" 2>/dev/null
cmp "$tmp/g1.txt" "$tmp/g3.txt"

"$py" - "$tmp" <<'PY'
import sys
tmp = sys.argv[1]
for name, prompt in [("a", "The licence"), ("g1", "héllo wörld")]:
    raw = open(f"{tmp}/{name}.txt", "rb").read()
    text = raw.decode("utf-8")  # strict: the sanitizer must leave only valid UTF-8
    assert text.startswith(prompt), text[:40]
    assert text.endswith("\n")
    # at most 100 bytes generated; each becomes itself or U+FFFD (3 bytes)
    assert len(raw) - len(prompt.encode()) - 1 <= 3 * 100
print("samples are valid UTF-8")
PY

# eval --batches N: the windows training evaluated with eval.batches = N.
"$M6TRAIN" eval --run-dir "$tmp/run" --batches 3 >"$tmp/e3.txt"
"$M6TRAIN" eval --run-dir "$tmp/run" >"$tmp/eall.txt"
cat "$tmp/e3.txt" "$tmp/eall.txt"
"$py" - "$tmp" <<'PY'
import json, math, re, sys
tmp = sys.argv[1]
last = [json.loads(l) for l in open(f"{tmp}/run/metrics.jsonl") if '"kind":"eval"' in l][-1]
def parse(path):
    m = re.search(r"loss ([0-9.]+) \| bits per byte ([0-9.]+)", open(path).read())
    return float(m.group(1)), float(m.group(2))
loss3, bpb3 = parse(f"{tmp}/e3.txt")
assert last["step"] == 30
assert abs(loss3 - last["eval_loss"]) < 2e-6, (loss3, last["eval_loss"])
loss, bpb = parse(f"{tmp}/eall.txt")
assert abs(bpb - loss / math.log(2)) < 1e-5, (loss, bpb)
assert 1.0 < loss < 5.0 and abs(loss - loss3) < 0.5, (loss, loss3)
windows = int(re.search(r"(\d+) windows of 32", open(f"{tmp}/eall.txt").read()).group(1))
tokens = int(re.search(r"(\d+) tokens in", open(f"{tmp}/eall.txt").read()).group(1))
assert windows == (tokens - 1) // 32, (windows, tokens)
print(f"eval reproduces the run's eval loss {last['eval_loss']:.6f}; whole split {loss:.4f}")
PY

# Bad input: exit codes and messages.
expect() {  # expect CODE TEXT -- ARGS...
  local code=$1 text=$2 rc=0
  shift 3
  "$M6TRAIN" "$@" >/dev/null 2>"$tmp/err" || rc=$?
  if [[ $rc -ne $code ]] || ! grep -qF -- "$text" "$tmp/err"; then
    echo "m6train $*: exit $rc (expected $code), stderr:" >&2
    cat "$tmp/err" >&2
    exit 1
  fi
  echo "ok: exit $code: $(head -1 "$tmp/err")"
}
mkdir -p "$tmp/empty"
expect 4 "no checkpoint" -- generate --run-dir "$tmp/empty"
expect 4 "no checkpoint" -- eval --run-dir "$tmp/empty"
expect 2 "invalid UTF-8 at byte 3" -- generate --run-dir "$tmp/run" --prompt $'abc\xff'
expect 2 "invalid UTF-8 at byte 1" -- generate --run-dir "$tmp/run" --prompt $'a\xe2\x82'
expect 3 "$tmp/nothing" -- eval --run-dir "$tmp/run" --data "$tmp/nothing/val_*.bin"
expect 2 "--temperature: must be a number >= 0 (got -1)" -- generate --run-dir "$tmp/run" --temperature -1
echo ok
