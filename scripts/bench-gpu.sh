#!/usr/bin/env bash
# GPU training throughput of m6train against PyTorch on the same GPU, in one
# call on a bare GPU machine (driver, CUDA, Python with PyTorch 2.x; no
# network), well under 8 minutes. Config: configs/bench-gpu.yaml (GPT-2-small
# shaped MoE: d 768, 12 heads, 12 layers, d_ff 3072, MoE every 2nd layer, 8
# experts, top-2, capacity 1.25, seq 1024, bytes) and its dense variant
# (--set model.moe.every=0). Measured in the same run:
#   - m6train tokens/s, precision.compute fp32 and bf16 (the dense variant
#     also in bf16 with train.graphs off: what replaying graphs brings), and
#     where the MoE bf16 step's time goes (log.profile: time per backend op);
#   - the same model in PyTorch (scripts/bench_torch_gpu.py: bf16 autocast,
#     SDPA, fused AdamW), eager and torch.compile;
#   - the cuBLAS bf16 GEMM peak of this GPU (8192^3 through torch.matmul);
#   - MFU of each: model FLOPs per token (PaLM appendix B: 6 N_active + 12 L T d,
#     active parameters only) x tokens/s / the measured peak.
# Prints one table and writes bench/results/bench-gpu-<device>-<date>.md with
# the commit. Speed is reported, never asserted.
# Uses bundle/ (scripts/gpu-bundle.sh) when present, else builds build-gpu.
# usage: scripts/bench-gpu.sh [--bundle DIR] [--results DIR] [--steps N]
# env: TORCH_STEPS (timed PyTorch steps, default 8), PYTHON (default python3)
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
bundle=$src/bundle
[[ -x "$src/run" ]] && bundle=$src
results=$src/bench/results
steps=15
while (($#)); do
  case $1 in
    --bundle) bundle=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "usage: $0 [--bundle DIR] [--results DIR] [--steps N]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
torch_steps=${TORCH_STEPS:-8}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
t_start=$(date +%s)

if [[ -x "$bundle/run" ]]; then
  run=$bundle/run
  commit=$(cat "$bundle/COMMIT" 2> /dev/null || echo unknown)
else
  build=$src/build-gpu
  cmake -S "$src" -B "$build" -G Ninja -DM6_CUDA=ON -DM6_TESTS=OFF > /dev/null || exit 1
  ninja -C "$build" m6train || exit 1
  run=$tmp/run
  printf '#!/usr/bin/env bash\nprog=$1; shift; exec "%s/$prog" "$@"\n' "$build" > "$run"
  chmod +x "$run"
  commit=$(git -C "$src" rev-parse --short HEAD 2> /dev/null || echo unknown)
fi
torch_py=$src/scripts/bench_torch_gpu.py
config=$src/configs/bench-gpu.yaml
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1)
gpu_name=${gpu_name:-unknown}
device_tag=$(echo "$gpu_name" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\+/-/g; s/^-//; s/-$//')

corpus=()
for f in "$src/README.md" "$src"/scripts/*.py "$src"/core/*/*.cpp /usr/share/common-licenses/GPL-3; do
  [[ -f $f ]] && corpus+=("$f")
done
"$run" m6train data build --input "${corpus[@]}" --output "$tmp/data" --val-fraction 0.05 > /dev/null ||
  { echo "bench-gpu: data build failed" >&2; exit 1; }

echo "== cuBLAS bf16 GEMM peak"
peak_json=$(timeout 120 "$PY" "$torch_py" --gemm-peak --json | tail -1)
peak=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["tflops"])' "$peak_json" 2> /dev/null || echo 0)
echo "peak ${peak} TFLOP/s"

# m6train: mean tokens/s of the logged records after the first (warm-up).
m6_run() {  # NAME PRECISION EXTRA...
  local name=$1 prec=$2
  shift 2
  if ! timeout 240 "$run" m6train --config "$config" --run-dir "$tmp/$name" --max-steps "$steps" \
    --set "data.train=$tmp/data/train_*.bin" --set "data.val=$tmp/data/val_*.bin" \
    --set precision.compute="$prec" --set log.every=5 "$@" > "$tmp/$name.log" 2>&1; then
    echo "bench-gpu: m6train $name failed: $(grep -m1 -i error "$tmp/$name.log")" >&2
    echo 0
    return
  fi
  "$PY" - "$tmp/$name/metrics.jsonl" <<'PY'
import json, sys
t = [r["tokens_per_s"] for r in map(json.loads, open(sys.argv[1])) if r.get("kind") == "train"]
t = t[1:] if len(t) > 1 else t
print(sum(t) / len(t) if t else 0)
PY
}
torch_run() {  # NAME MODE RUN_DIR
  local out
  out=$(timeout 300 "$PY" "$torch_py" --config "$3/config.json" --mode "$2" --dtype bf16 \
    --steps "$torch_steps" --warmup 3 --peak-tflops "$peak" --json 2> "$tmp/$1.err") || {
    echo "bench-gpu: torch $1 failed: $(tail -2 "$tmp/$1.err")" >&2
    echo 0
    return
  }
  echo "${out%$'\n'*}" >&2
  "$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["tokens_per_s"])' "${out##*$'\n'}"
}

declare -a lines
for variant in moe dense; do
  extra=()
  [[ $variant == dense ]] && extra=(--set model.moe.every=0)
  echo "== $variant ($(($(date +%s) - t_start)) s)"
  m32=$(m6_run "$variant-fp32" fp32 "${extra[@]}")
  m16=$(m6_run "$variant-bf16" bf16 "${extra[@]}")
  rd=$tmp/$variant-fp32
  [[ -f $rd/config.json ]] || rd=$tmp/$variant-bf16
  te=$(torch_run "$variant-eager" eager "$rd")
  tc=$(torch_run "$variant-compile" compile "$rd")
  fpt=$("$PY" "$torch_py" --flops --config "$rd/config.json" 2> /dev/null |
    "$PY" -c 'import json,sys; print(json.load(sys.stdin)["flops_per_token"])' 2> /dev/null || echo 0)
  lines+=("$variant $m32 $m16 $te $tc $fpt")
  [[ $variant == dense ]] && dense_bf16=$m16
done
# What graphs (train.graphs, on by default for the dense config on CUDA) bring.
echo "== dense, bf16, graphs off ($(($(date +%s) - t_start)) s)"
nograph=$(m6_run dense-bf16-nographs bf16 --set model.moe.every=0 --set train.graphs=off)
graphs_line=$("$PY" -c 'import sys; on, off = map(float, sys.argv[1:3]); print(
    f"dense bf16 with train.graphs off: {off:.0f} tok/s; graphs on: {on:.0f} tok/s"
    + (f" ({on / off:.3f}x)" if on > 0 and off > 0 else ""))' "${dense_bf16:-0}" "${nograph:-0}")

table=$("$PY" - "$peak" "${lines[@]}" <<'PY'
import sys
peak = float(sys.argv[1])
def r(a, b):
    return f"{a / b:.2f}x" if a > 0 and b > 0 else "-"
def mfu(tps, fpt):
    return f"{100 * tps * fpt / (peak * 1e12):.1f}%" if peak > 0 and tps > 0 else "-"
print("| config | m6train fp32 tok/s | m6train bf16 tok/s | torch eager bf16 | torch compile bf16 "
      "| bf16 vs eager | bf16 vs compile | MFU m6train bf16 | MFU compile |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for line in sys.argv[2:]:
    v, m32, m16, te, tc, fpt = line.split()
    m32, m16, te, tc, fpt = map(float, (m32, m16, te, tc, fpt))
    print(f"| {v} | {m32:.0f} | {m16:.0f} | {te:.0f} | {tc:.0f} | {r(m16, te)} | {r(m16, tc)} "
          f"| {mfu(m16, fpt)} | {mfu(tc, fpt)} |")
print(f"\ncuBLAS bf16 GEMM peak measured: {peak:.0f} TFLOP/s")
PY
)
table+=$'\n\n'"$graphs_line"
# Where the time goes: the MoE config in bf16 under the op profiler.
echo "== moe, bf16, log.profile ($(($(date +%s) - t_start)) s)"
m6_run moe-bf16-profile bf16 --set log.profile=true > /dev/null
profile=$("$PY" - "$tmp/moe-bf16-profile/profile.json" <<'PY' 2> /dev/null || echo "(no profile: the run failed)"
import json, sys
p = json.load(open(sys.argv[1]))
print(f"Where the time goes (moe, bf16, log.profile: {p['step_ms']:.1f} ms per step, "
      f"{100 * p['op_ms_per_step'] / p['step_ms']:.1f}% in backend ops):\n")
print("| op | ms/step | share | calls/step |")
print("|---|---:|---:|---:|")
for o in p["ops"][:12]:
    print(f"| {o['op']} | {o['ms_per_step']:.3f} | {100 * o['share_of_step']:.1f}% "
          f"| {o['calls_per_step']:.1f} |")
PY
)
table+=$'\n\n'"$profile"
echo
echo "$table"
total=$(($(date +%s) - t_start))
mkdir -p "$results"
md=$results/bench-gpu-${device_tag:-unknown}-$(date -u +%Y-%m-%d).md
{
  echo "# bench-gpu on $gpu_name, $(date -u +%Y-%m-%d)"
  echo
  echo "Commit $commit; \`scripts/bench-gpu.sh --steps $steps\` (PyTorch $torch_steps timed steps), ${total} s."
  echo "Config configs/bench-gpu.yaml (dense: --set model.moe.every=0), micro-batch 8 x 1024 tokens."
  echo
  echo "$table"
} > "$md"
echo "wrote $md (${total} s)"
