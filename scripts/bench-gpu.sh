#!/usr/bin/env bash
# GPU training throughput of m6train against PyTorch on the same GPU, in one
# call on a bare GPU machine (driver, CUDA, Python with PyTorch 2.x; no
# network), well under 8 minutes. Config: configs/bench-gpu.yaml (GPT-2-small
# shaped MoE: d 768, 12 heads, 12 layers, d_ff 3072, MoE every 2nd layer, 8
# experts, top-2, capacity 1.25, seq 1024, bytes) and its dense variant
# (--set model.moe.every=0 --set model.moe.experts=0). Measured in the same run:
#   - m6train tokens/s, precision.compute fp32 and bf16 (the dense variant
#     also in bf16 with train.graphs off: what replaying graphs brings), and
#     where the MoE bf16 step's time goes (log.profile: time per backend op);
#   - the same model in PyTorch (scripts/bench_torch_gpu.py: bf16 autocast,
#     SDPA, fused AdamW), eager and torch.compile;
#   - the cuBLAS bf16 GEMM peak of this GPU (8192^3 through torch.matmul);
#   - MFU of each: model FLOPs per token (PaLM appendix B: 6 N_active + 12 L T d,
#     active parameters only) x tokens/s / the measured peak.
# Writes bench/results/bench-gpu-<device>-<date>.md (or --results DIR) as it
# goes: the header first, a table row when a variant is done, so a call cut
# short keeps what ran; the runs' logs (small files only) to
# bench-gpu-logs.tgz beside it. Order: the GEMM peak, then per variant m6train
# bf16, PyTorch eager, m6train fp32, torch.compile (the slowest to start)
# last. A failed m6train run leaves the PyTorch runs standing (their config
# then comes from the YAML). Speed is reported, never asserted.
# Uses bundle/ (scripts/gpu-bundle.sh) when present, else --build DIR's
# m6train, else builds build-gpu.
# usage: scripts/bench-gpu.sh [--bundle DIR | --build DIR] [--results DIR] [--steps N]
#          [--budget S] [--config FILE] [--device cuda|cpu] [--torch-modes "eager compile"]
#   --budget S: finish within S seconds (every run's limit cut to what is
#     left; runs that no longer fit are reported as skipped)
#   --config/--device/--torch-modes: the script's own check on the CPU
#     (tests/cli/bench_gpu_script.sh runs a tiny config with --device cpu)
# env: TORCH_STEPS (timed PyTorch steps, default 8), PYTHON (default python3)
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
bundle=$src/bundle
[[ -x "$src/run" ]] && bundle=$src
results=$src/bench/results
steps=15 budget=3600 build="" device=cuda torch_modes="eager compile"
config=$src/configs/bench-gpu.yaml
usage="usage: $0 [--bundle DIR | --build DIR] [--results DIR] [--steps N] [--budget S] [--config FILE] [--device cuda|cpu] [--torch-modes \"eager compile\"]"
while (($#)); do
  case $1 in
    --bundle) bundle=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --torch-modes) torch_modes=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
[[ $budget =~ ^[0-9]+$ && $steps =~ ^[0-9]+$ ]] ||
  { echo "bench-gpu: --budget and --steps take whole numbers (got '$budget', '$steps')" >&2; exit 2; }
[[ $device == cuda || $device == cpu ]] || { echo "bench-gpu: --device is cuda or cpu (got '$device')" >&2; exit 2; }
[[ -f $config ]] || { echo "bench-gpu: no config file $config" >&2; exit 2; }
PY=${PYTHON:-python3}
torch_steps=${TORCH_STEPS:-8}
t_start=$(date +%s)
deadline=$((t_start + budget))
source "$src/scripts/gpu_common.bash"
# Run directories in memory when there is room: every run ends with a full
# checkpoint (3.4 GB for the MoE config), deleted once its numbers are read.
tmp=$(mktemp -d -p /dev/shm 2> /dev/null || mktemp -d)
mkdir -p "$results"
trap 'keep_logs "$tmp" "$results/bench-gpu-logs.tgz"; rm -rf "$tmp"' EXIT
secs() { echo $(($(date +%s) - t_start)); }

if [[ -z $build && -x "$bundle/run" ]]; then
  run=$bundle/run
  commit=$(cat "$bundle/COMMIT" 2> /dev/null || echo unknown)
else
  if [[ -z $build ]]; then
    build=$src/build-gpu
    cmake -S "$src" -B "$build" -G Ninja -DM6_CUDA=ON -DM6_TESTS=OFF > /dev/null || exit 1
    ninja -C "$build" m6train || exit 1
  fi
  run=$tmp/run
  printf '#!/usr/bin/env bash\nprog=$1; shift; exec "%s/$prog" "$@"\n' "$(cd "$build" && pwd)" > "$run"
  chmod +x "$run"
  commit=$(git -C "$src" describe --always --dirty 2> /dev/null || echo unknown)
fi
torch_py=$src/scripts/bench_torch_gpu.py
if [[ $device == cuda ]]; then
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1)
else
  gpu_name=$(lscpu 2> /dev/null | sed -n 's/^Model name: *//p' | head -1)
fi
gpu_name=${gpu_name:-unknown}
device_tag=$(echo "$gpu_name" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\+/-/g; s/^-//; s/-$//')
dense_set=(--set model.moe.every=0 --set model.moe.experts=0)
md=$results/bench-gpu-${device_tag:-unknown}-$(date -u +%Y-%m-%d).md
{
  echo "# bench-gpu on $gpu_name, $(date -u +%Y-%m-%d)"
  echo
  echo "Commit $commit; \`scripts/bench-gpu.sh --steps $steps --budget $budget\` (PyTorch $torch_steps timed steps, modes: $torch_modes)."
  echo "Config ${config#"$src"/} (dense: ${dense_set[*]}), device $device."
  echo "The PyTorch peer (scripts/bench_torch_gpu.py): bf16 autocast, SDPA, fused AdamW; its expert"
  echo "GEMMs run on the static [E, C, d] buffer (all C capacity slots, padding included) and it"
  echo "trains on random tokens; m6train's expert GEMMs take the routed rows only, on text."
  echo
} > "$md"

echo "== GEMM peak"
peak=0
if limit=$(limit_s 120); then
  peak_args=(--gemm-peak --device "$device" --json)
  [[ $device == cpu ]] && peak_args+=(--gemm-n 256)
  peak_json=$(timeout "$limit" "$PY" "$torch_py" "${peak_args[@]}" 2> "$tmp/peak.err" | tail -1)
  peak=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["tflops"])' "$peak_json" 2> /dev/null || echo 0)
fi
echo "peak ${peak} TFLOP/s"

corpus=()
for f in "$src/README.md" "$src"/scripts/*.py "$src"/core/*/*.cpp /usr/share/common-licenses/GPL-3; do
  [[ -f $f ]] && corpus+=("$f")
done
data_ok=1
"$run" m6train data build --input "${corpus[@]}" --output "$tmp/data" --val-fraction 0.05 \
  > "$tmp/data.log" 2>&1 || {
  data_ok=0
  echo "bench-gpu: data build failed (m6train runs skipped): $(tail -2 "$tmp/data.log")" >&2
}

# m6_run NAME PRECISION EXTRA...: mean tokens/s of the logged records after
# the first (warm-up, graph recording); 0 when the run failed or was skipped.
m6_run() {
  local name=$1 prec=$2 limit
  shift 2
  ((data_ok)) || { echo 0; return; }
  limit=$(limit_s 240) || { echo "bench-gpu: m6train $name skipped: budget" >&2; echo 0; return; }
  local rc=0
  timeout "$limit" "$run" m6train --config "$config" --run-dir "$tmp/$name" --max-steps "$steps" \
    --set "data.train=$tmp/data/train_*.bin" --set "data.val=$tmp/data/val_*.bin" \
    --set train.device="$device" --set precision.compute="$prec" --set log.every=5 "$@" \
    > "$tmp/$name.log" 2>&1 || rc=$?
  rm -rf "$tmp/$name/checkpoints"
  if ((rc != 0)); then
    echo "bench-gpu: m6train $name failed: $(grep -m1 -i error "$tmp/$name.log" || tail -1 "$tmp/$name.log")" >&2
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
# torch_config VARIANT: sets torch_cfg to bench_torch_gpu.py's config
# arguments: the resolved config of an m6train run of the variant, else the
# YAML with the variant's overrides (--set).
torch_config() {
  local rd
  for rd in "$tmp/$1-bf16" "$tmp/$1-fp32"; do
    [[ -f $rd/config.json ]] && { torch_cfg=(--config "$rd/config.json"); return; }
  done
  torch_cfg=(--config "$config")
  [[ $1 == dense ]] && torch_cfg+=("${dense_set[@]}")
  return 0
}
# torch_run NAME MODE VARIANT: tokens/s, 0 when failed, skipped or not asked for.
torch_run() {
  local out limit
  [[ " $torch_modes " == *" $2 "* ]] || { echo 0; return; }
  limit=$(limit_s 300) || { echo "bench-gpu: torch $1 skipped: budget" >&2; echo 0; return; }
  torch_config "$3"
  out=$(timeout "$limit" "$PY" "$torch_py" "${torch_cfg[@]}" --mode "$2" --dtype bf16 --device "$device" \
    --steps "$torch_steps" --warmup 3 --peak-tflops "$peak" --json 2> "$tmp/$1.err") || {
    echo "bench-gpu: torch $1 failed: $(tail -2 "$tmp/$1.err")" >&2
    echo 0
    return
  }
  echo "${out%$'\n'*}" >&2
  "$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["tokens_per_s"])' "${out##*$'\n'}"
}
# table_row VARIANT M32 M16 TE TC FPT: one Markdown row (ratios, MFU).
table_row() {
  "$PY" - "$peak" "$@" <<'PY'
import sys
peak = float(sys.argv[1])
v = sys.argv[2]
m32, m16, te, tc, fpt = map(float, sys.argv[3:8])
def r(a, b):
    return f"{a / b:.2f}x" if a > 0 and b > 0 else "-"
def mfu(tps):
    return f"{100 * tps * fpt / (peak * 1e12):.1f}%" if peak > 0 and tps > 0 and fpt > 0 else "-"
print(f"| {v} | {m32:.0f} | {m16:.0f} | {te:.0f} | {tc:.0f} | {r(m16, te)} | {r(m16, tc)} "
      f"| {mfu(m16)} | {mfu(tc)} |")
PY
}

{
  echo "| config | m6train fp32 tok/s | m6train bf16 tok/s | torch eager bf16 | torch compile bf16" \
    "| bf16 vs eager | bf16 vs compile | MFU m6train bf16 | MFU compile |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
} >> "$md"
dense_bf16=0
for variant in moe dense; do
  extra=()
  [[ $variant == dense ]] && extra=("${dense_set[@]}")
  echo "== $variant ($(secs) s)"
  m16=$(m6_run "$variant-bf16" bf16 "${extra[@]}")
  te=$(torch_run "$variant-eager" eager "$variant")
  m32=$(m6_run "$variant-fp32" fp32 "${extra[@]}")
  tc=$(torch_run "$variant-compile" compile "$variant")
  torch_config "$variant"
  fpt=$("$PY" "$torch_py" --flops "${torch_cfg[@]}" 2> /dev/null |
    "$PY" -c 'import json,sys; print(json.load(sys.stdin)["flops_per_token"])' 2> /dev/null || echo 0)
  table_row "$variant" "$m32" "$m16" "$te" "$tc" "$fpt" | tee -a "$md"
  [[ $variant == dense ]] && dense_bf16=$m16
done
echo >> "$md"
printf 'Measured GEMM peak (bf16, torch.matmul): %.1f TFLOP/s.\n' "$peak" | tee -a "$md"

# What graphs (train.graphs, on by default for the dense config on CUDA) bring.
echo "== dense, bf16, graphs off ($(secs) s)"
nograph=$(m6_run dense-bf16-nographs bf16 "${dense_set[@]}" --set train.graphs=off)
echo >> "$md"
"$PY" -c 'import sys; on, off = map(float, sys.argv[1:3]); print(
    f"dense bf16 with train.graphs off: {off:.0f} tok/s; graphs on: {on:.0f} tok/s"
    + (f" ({on / off:.3f}x)" if on > 0 and off > 0 else ""))' "$dense_bf16" "${nograph:-0}" | tee -a "$md"

# Where the time goes: the MoE config in bf16 under the op profiler.
echo "== moe, bf16, log.profile ($(secs) s)"
m6_run moe-bf16-profile bf16 --set log.profile=true > /dev/null
echo >> "$md"
"$PY" - "$tmp/moe-bf16-profile/profile.json" <<'PY' 2> /dev/null | tee -a "$md" || echo "(no profile: the run failed or was skipped)" | tee -a "$md"
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
total=$(secs)
{
  echo
  echo "All runs done: ${total} s."
} >> "$md"
echo "wrote $md (${total} s)"
