#!/usr/bin/env bash
# scripts/bench-gpu.sh end to end on the CPU (CI has no GPU), so that the one
# device call it is made for does not fail on the script: a tiny MoE config
# with --device cpu and PyTorch eager only. Every m6train variant (MoE and the
# dense one, fp32 and bf16, graphs off, the profile) and the PyTorch peer
# report tokens/s in the results file, which is written as the runs finish;
# the logs come back in bench-gpu-logs.tgz. With --budget 0 every run is
# skipped and the results file still says so.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
PY=/usr/bin/python3
"$PY" -c 'import torch, yaml' 2> /dev/null || { echo "bench_gpu_script: $PY needs torch and yaml"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/tiny.yaml" <<YAML
model: {vocab_size: 256, max_seq_len: 32, d_model: 32, n_heads: 2, n_layers: 2, d_ff: 64,
        moe: {every: 2, experts: 4, top_k: 2, capacity_factor: 1.25}}
data: {train: unset, val: unset}
train: {steps: 100, seq_len: 32, micro_batch: 4, global_batch: 4, threads: 1}
optim: {lr: 1.0e-3, warmup_steps: 2}
eval: {every: 0, batches: 1}
YAML
bench=(env PYTHON="$PY" TORCH_STEPS=2 "$M6_SOURCE_DIR/scripts/bench-gpu.sh"
  --build "$(dirname "$M6TRAIN")" --config "$tmp/tiny.yaml" --device cpu --torch-modes eager --steps 12)

"${bench[@]}" --results "$tmp/res" > "$tmp/out.txt" 2>&1 || { cat "$tmp/out.txt"; exit 1; }
md=$(ls "$tmp"/res/bench-gpu-*.md)
"$PY" - "$md" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rows = {m.group(1): m.group(2).split("|") for m in re.finditer(r"^\| (moe|dense) \|(.*)\|$", text, re.M)}
assert set(rows) == {"moe", "dense"}, text
for v, cells in rows.items():
    m32, m16, te, tc = (float(c) for c in cells[:4])
    assert m32 > 0 and m16 > 0, f"{v}: m6train fp32 {m32}, bf16 {m16} tokens/s"
    assert te > 0, f"{v}: torch eager {te} tokens/s"
    assert tc == 0 and cells[5].strip() == "-", f"{v}: compile was not asked for: {cells}"
    assert cells[4].strip().endswith("x"), f"{v}: no bf16/eager ratio: {cells}"
m = re.search(r"graphs off: (\d+) tok/s; graphs on: (\d+) tok/s", text)
assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, text
assert "| op | ms/step | share | calls/step |" in text, text
ops = re.findall(r"^\| ([a-z0-9_]+) \| ([0-9.]+) \| [0-9.]+% \| [0-9.]+ \|$", text, re.M)
assert len(ops) >= 5 and sum(float(ms) for _, ms in ops) > 0, f"profile rows: {ops}"
assert "All runs done" in text, text
print(f"ok: bench-gpu.sh on the CPU: moe {rows['moe'][1].strip()} / dense {rows['dense'][1].strip()} bf16 tok/s")
PY
tar tzf "$tmp/res/bench-gpu-logs.tgz" > "$tmp/logs.txt"
for f in ./moe-bf16.log ./dense-fp32.log ./moe-eager.err ./moe-bf16-profile/profile.json ./moe-bf16/metrics.jsonl; do
  grep -qx "$f" "$tmp/logs.txt" || { echo "FAIL: $f not in bench-gpu-logs.tgz:"; cat "$tmp/logs.txt"; exit 1; }
done
if grep -q "checkpoints/" "$tmp/logs.txt"; then echo "FAIL: checkpoints in the logs archive"; exit 1; fi
echo "ok: logs archive ($(wc -l < "$tmp/logs.txt") files, no checkpoints)"

# --budget 0: nothing runs, the results file says what was skipped.
"${bench[@]}" --results "$tmp/res0" --budget 0 > "$tmp/out0.txt" 2>&1 || { cat "$tmp/out0.txt"; exit 1; }
grep -q "m6train moe-bf16 skipped: budget" "$tmp/out0.txt"
grep -q "torch moe-eager skipped: budget" "$tmp/out0.txt"
grep -q "^| moe | 0 | 0 | 0 | 0 | - | - | - | - |$" "$tmp"/res0/bench-gpu-*.md
echo "ok: --budget 0 skips every run and still writes the results file"
