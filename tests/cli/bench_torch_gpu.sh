#!/usr/bin/env bash
# The PyTorch peer of scripts/bench-gpu.sh on the CPU (CI has no GPU): its MoE
# dispatch equals a per-token loop (--self-test), a tiny training benchmark
# runs and reports finite numbers, and the active parameters behind its MFU
# are m6train's (`--dry-run` "active per token", minus the position table,
# which is a lookup).
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
PY=/usr/bin/python3
"$PY" -c 'import torch' 2> /dev/null || { echo "bench_torch_gpu: $PY cannot import torch"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
script=$M6_SOURCE_DIR/scripts/bench_torch_gpu.py

"$PY" "$script" --self-test
"$PY" "$script" --tiny --device cpu --dtype fp32 --steps 2 --warmup 1 --json | tail -1 > "$tmp/out.json"
"$PY" "$script" --gemm-peak --device cpu --gemm-n 64 --json | tail -1 > "$tmp/peak.json"

cat > "$tmp/tiny.yaml" <<YAML
model: {vocab_size: 256, max_seq_len: 32, d_model: 32, n_heads: 2, n_layers: 2, d_ff: 64,
        moe: {every: 2, experts: 4, top_k: 2}}
data: {train: x, val: y}
train: {seq_len: 32, micro_batch: 2, global_batch: 2}
YAML
active=$("$M6TRAIN" --config "$tmp/tiny.yaml" --dry-run | sed -n 's/.*active per token [^(]*(\([0-9]*\)).*/\1/p')
"$PY" - "$tmp/out.json" "$tmp/peak.json" "$active" <<'PY'
import json, math, sys
out = json.load(open(sys.argv[1]))
peak = json.load(open(sys.argv[2]))
m6_active = int(sys.argv[3])
assert out["tokens_per_s"] > 0 and math.isfinite(out["tokens_per_s"]), out
assert math.isfinite(out["loss_first"]) and math.isfinite(out["loss_last"]), out
assert 4.5 < out["loss_first"] < 6.5, f"first loss {out['loss_first']} is not near ln(256)"
want = m6_active - 32 * 32  # m6train counts the position table (max_seq_len x d)
assert out["active_params"] == want, f"active params {out['active_params']} != m6train's {want}"
assert out["flops_per_token"] == 6 * want + 12 * 2 * 32 * 32, out
assert peak["tflops"] > 0, peak
print(f"ok: {out['tokens_per_s']:.0f} tokens/s on the CPU, active params {want} as m6train")
PY
