#!/usr/bin/env bash
# The prepared GPU check: one call on a bare GPU machine (driver, CUDA, Python
# with PyTorch and numpy; no MPI, no Debian packages, no network), well under
# 8 minutes. Uses bundle/ (scripts/gpu-bundle.sh, built elsewhere) when
# present, else builds build-gpu here (needs cmake, ninja and the packages of
# scripts/setup.sh).
#
#   1. [cuda] op tests: every op of backend.h, CUDA against the CPU reference,
#      in fp32 and under precision.compute bf16 and fp16 (test_cuda_ops
#      --compute bf16|fp16: inputs rounded where the model stores them
#      rounded, outputs rounded on each backend where the model rounds them,
#      GEMMs on the bf16 tensor cores in bf16; each rounded output within one
#      ulp of the format plus the op's fp32 tolerance, tests/cuda/
#      cuda_test_util.h "Half precision"). Exit 0 pass, 1 fail, 2 the mode is
#      missing from the build (MISSING row), 77 no CUDA device.
#      Also in test_cuda_ops (tests/cuda/test_cuda_graphs.cpp): sum_to,
#      router_aux_sums and routing_hash (bitwise) against the CPU; bad
#      indices thrown by check_errors / sync with the CPU's message; the host
#      read count; staged to_device copies through a wrapping ring while the
#      stream stalls; a CUDA graph (gemm, bias, GELU, sum_to) replayed with
#      new inputs against the eager ops and the CPU, and refused captures.
#      The model's micro-batches replayed from a CUDA graph (train.graphs)
#      against eager, bit-identical over 4 steps. The fused attention
#      (test_cuda_attention: forward, dqkv and log-sum-exp within 2x the
#      error of a naive fp32 attention, bit-identical reruns; the bf16
#      tensor-core kernels within the bound derived in attention_tc_ref.h)
#      and the speed of both at the shape of configs/bench-gpu.yaml (INFO row).
#   2. NCCL communicator, world of 1 without MPI (test_cuda_nccl): every
#      collective on device and host buffers, bf16/fp16 payloads, split, and
#      a stuck collective aborted after the timeout. With 2+ GPUs and mpirun
#      on the PATH, also a 2-rank CUDA+NCCL training run against the CPU one.
#   3. Whole model: `m6train debug-step` loss and every gradient, CUDA against
#      CPU, on 3 tiny configs (tests/ref/configs: dense, top-2 with drops,
#      prototypes), fp32 and bf16. Tolerances (scripts/gpu_compare.py step):
#        fp32: loss relative 1e-5; each gradient max|cuda-cpu| / max|cpu| 1e-4
#        bf16: loss relative 2e-2; each gradient 5e-2 (a bf16 ulp is 2^-8 and
#              the backends sum GEMMs in different orders before rounding)
#   4. 40 training steps of a tiny top-2 MoE on CUDA and on the CPU (fp32,
#      dropless so that no capacity decision can flip): logged losses agree
#      within 1e-5 relative at step 1 and 2e-3 at every logged step.
#      Offload on CUDA, 10 steps: offload.params 1 against 0 (both with the
#      host optimizer) gives identical exported weights; the host optimizer
#      against the device's agrees within 1e-3 (step 1 within 1e-6).
#   5. fp16 with an injected overflow: the failpoint $M6_OVERFLOW_FAILPOINT
#      (default overflow) at step 10 must skip that step, halve the loss
#      scale and let the run finish.
# Prints one table and writes it to bench/results/gpu-check-<device>-<date>.md
# (or --results DIR), a row at a time as the checks finish (a call cut short
# keeps what ran), and the checks' logs (small files only) to
# gpu-check-logs.tgz beside it. --budget S: finish within S seconds: every
# step's time limit is cut to what is left, and steps that no longer fit are
# rows SKIPPED "budget".
# Usage: scripts/gpu-check.sh [--bundle DIR] [--results DIR] [--budget S]
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
bundle=$src/bundle
[[ -x "$src/run" ]] && bundle=$src  # running from inside the bundle
results=$src/bench/results
budget=3600
while (($#)); do
  case $1 in
    --bundle) bundle=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    *) echo "usage: $0 [--bundle DIR] [--results DIR] [--budget S]" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=PASSIVE
PY=${PYTHON:-python3}
overflow_fp=${M6_OVERFLOW_FAILPOINT:-overflow}
overflow_at=10
t_start=$(date +%s)

[[ $budget =~ ^[0-9]+$ ]] || { echo "gpu-check: --budget takes whole seconds (got '$budget')" >&2; exit 2; }
source "$src/scripts/gpu_common.bash"
deadline=$((t_start + budget))
tmp=$(mktemp -d)
mkdir -p "$results"
trap 'keep_logs "$tmp" "$results/gpu-check-logs.tgz"; rm -rf "$tmp"' EXIT
if [[ -x "$bundle/run" ]]; then
  run=$bundle/run
  refdir=$bundle/tests/ref
  compare=$bundle/scripts/gpu_compare.py
  [[ -f $compare ]] || compare=$src/scripts/gpu_compare.py
  commit=$(cat "$bundle/COMMIT" 2> /dev/null || echo unknown)
else
  build=$src/build-gpu
  cmake -S "$src" -B "$build" -G Ninja -DM6_CUDA=ON -DM6_TESTS=ON > /dev/null || exit 1
  ninja -C "$build" m6train test_cuda_ops test_cuda_attention test_cuda_nccl || exit 1
  run=$tmp/run  # an executable, so that `timeout` can start it
  cat > "$run" <<RUN
#!/usr/bin/env bash
prog=\$1
shift
if [[ \$prog == m6train ]]; then exec "$build/m6train" "\$@"; else exec "$build/tests/\$prog" "\$@"; fi
RUN
  chmod +x "$run"
  refdir=$src/tests/ref
  compare=$src/scripts/gpu_compare.py
  commit=$(git -C "$src" rev-parse --short HEAD 2> /dev/null || echo unknown)
fi
[[ -d $refdir ]] || refdir=$src/tests/ref

gpu_name=unknown
gpus=0
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  gpus=$(nvidia-smi -L 2> /dev/null | grep -c GPU || true)
fi
device_tag=$(echo "$gpu_name" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\+/-/g; s/^-//; s/-$//')
[[ -n $device_tag ]] || device_tag=unknown

date_tag=$(date -u +%Y-%m-%d)
md=$results/gpu-check-$device_tag-$date_tag.md
{
  echo "# gpu-check on $gpu_name, $date_tag"
  echo
  echo "Commit $commit; \`scripts/gpu-check.sh --budget $budget\`; glibc $(ldd --version 2> /dev/null | head -1 | awk '{print $NF}')."
  if command -v nvidia-smi > /dev/null; then
    echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)."
  fi
  echo
  echo "| check | result | detail |"
  echo "|---|---|---|"
} > "$md"
declare -a rows
row() {  # NAME RESULT DETAIL: printed, and appended to the results file at once
  rows+=("$1|$2|$3")
  printf '  %-34s %-8s %s\n' "$1" "$2" "$3"
  echo "| $1 | $2 | ${3//|/\\|} |" >> "$md"
}
secs() { echo $(($(date +%s) - t_start)); }

# Preflight: the bundle's programs start here (loader, glibc, libraries).
if ! "$run" m6train --help > "$tmp/help.txt" 2>&1; then
  row "m6train starts" FAIL "$(tail -3 "$tmp/help.txt" | tr '\n' ' ' | cut -c1-300)"
  exit 1
fi

# ---- 1. op tests ----------------------------------------------------------------
op_test() {  # NAME ARGS...
  local name=$1 rc
  shift
  local limit
  limit=$(limit_s 240) || { row "$name" SKIPPED "budget"; return; }
  timeout "$limit" "$@" > "$tmp/ops.txt" 2>&1
  rc=$?
  cp "$tmp/ops.txt" "$tmp/ops-${name// /_}.txt"
  local failed passed
  failed=$(grep -c '^FAIL' "$tmp/ops.txt" || true)
  passed=$(grep -c '^ok' "$tmp/ops.txt" || true)
  case $rc in
    0) row "$name" PASS "$passed checks" ;;
    77)
      # nvidia-smi lists a GPU that CUDA cannot see: usually a driver older
      # than the toolkit of the build (CUDA 13.0 needs driver >= 580).
      if ((gpus > 0)); then
        row "$name" FAIL "nvidia-smi lists a GPU, CUDA sees none: driver too old?"
      else
        row "$name" SKIPPED "no CUDA device visible"
      fi
      ;;
    2) row "$name" MISSING "$(tail -1 "$tmp/ops.txt")" ;;
    124) row "$name" FAIL "timed out after $limit s" ;;
    *)
      if ((passed + failed == 0)); then
        row "$name" FAIL "rc $rc: $(tail -3 "$tmp/ops.txt" | tr '\n' ' ' | cut -c1-240)"
      else
        row "$name" FAIL "rc $rc: $failed of $((passed + failed)) checks failed"
      fi
      ;;
  esac
  grep '^FAIL' "$tmp/ops.txt" | head -10
}
echo "== op tests ($(secs) s)"
op_test "cuda ops fp32" "$run" test_cuda_ops
op_test "cuda ops bf16" "$run" test_cuda_ops --compute bf16
op_test "cuda ops fp16" "$run" test_cuda_ops --compute fp16
op_test "cuda fused attention" "$run" test_cuda_attention
if ! limit=$(limit_s 60); then
  row "attention speed B8 T1024 H12 dh64" SKIPPED "budget"
elif timeout "$limit" "$run" test_cuda_attention --bench > "$tmp/att.txt" 2>&1; then
  row "attention speed B8 T1024 H12 dh64" INFO "$(tail -1 "$tmp/att.txt")"
else
  row "attention speed B8 T1024 H12 dh64" FAIL "$(tail -1 "$tmp/att.txt" | cut -c1-160)"
fi

# ---- 2. NCCL ------------------------------------------------------------------------
echo "== NCCL ($(secs) s)"
op_test "nccl world of 1" "$run" test_cuda_nccl
grep -m1 '^NCCL' "$tmp/ops.txt" || true

# ---- data -------------------------------------------------------------------------
corpus=()
for f in "$src/README.md" /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 \
  "$refdir"/*.py; do
  [[ -f $f ]] && corpus+=("$f")
done
if ! "$run" m6train data build --input "${corpus[@]}" --output "$tmp/data" --val-fraction 0.1 \
  > "$tmp/data.txt" 2>&1; then
  cat "$tmp/data.txt"
  row "data build" FAIL "see above"
fi
data=(--set "data.train=$tmp/data/train_*.bin" --set "data.val=$tmp/data/val_*.bin")

# ---- 3. whole model, CUDA vs CPU -------------------------------------------------------
echo "== whole-model loss and gradients ($(secs) s)"
for prec in fp32 bf16; do
  if [[ $prec == fp32 ]]; then tol=(--loss-tol 1e-5 --grad-tol 1e-4); else tol=(--loss-tol 2e-2 --grad-tol 5e-2); fi
  for cfg in dense moe_top2_drop prototypes; do
    ok=1
    limit=$(limit_s 120) || { row "step $cfg $prec" SKIPPED "budget"; continue; }
    for dev in cuda cpu; do
      if ! timeout "$limit" "$run" m6train debug-step --config "$refdir/configs/$cfg.yaml" "${data[@]}" \
        --set train.device=$dev --set precision.compute=$prec --out "$tmp/step-$cfg-$prec-$dev" \
        > "$tmp/step.txt" 2>&1; then
        ok=0
        row "step $cfg $prec" FAIL "debug-step on $dev: $(grep -m1 -i error "$tmp/step.txt" | cut -c1-150)"
        break
      fi
    done
    ((ok)) || continue
    if detail=$("$PY" "$compare" step "$tmp/step-$cfg-$prec-cuda" "$tmp/step-$cfg-$prec-cpu" "${tol[@]}" 2>&1); then
      row "step $cfg $prec" PASS "$detail"
    else
      row "step $cfg $prec" FAIL "$detail"
    fi
  done
done

# ---- 4. 40 training steps ---------------------------------------------------------------
echo "== training ($(secs) s)"
cat > "$tmp/train.yaml" <<YAML
model:
  vocab_size: 256
  max_seq_len: 64
  d_model: 64
  n_heads: 4
  n_layers: 2
  d_ff: 128
  moe: {every: 2, experts: 4, top_k: 2, capacity_factor: 0}
data:
  train: $tmp/data/train_*.bin
  val: $tmp/data/val_*.bin
train: {steps: 40, seq_len: 64, micro_batch: 8, global_batch: 16, threads: 4}
optim: {lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 10}
eval: {every: 0, batches: 4}
log: {every: 5}
YAML
train_run() {  # NAME DEVICE EXTRA-ARGS...
  local name=$1 dev=$2
  shift 2
  local t0=$(date +%s%N) limit
  limit=$(limit_s 180) || { touch "$tmp/budget-skip"; echo "$name skipped: budget" >&2; return 1; }
  if timeout "$limit" "$run" m6train --config "$tmp/train.yaml" --run-dir "$tmp/run-$name" \
    --set train.device=$dev "$@" > "$tmp/$name.txt" 2>&1; then
    echo $((($(date +%s%N) - t0) / 1000000))
    return 0
  fi
  tail -5 "$tmp/$name.txt" >&2
  return 1
}
ms_cuda=$(train_run cuda32 cuda) && ms_cpu=$(train_run cpu32 cpu)
if [[ -n ${ms_cpu:-} ]]; then
  if detail=$("$PY" "$compare" train "$tmp/run-cuda32/metrics.jsonl" "$tmp/run-cpu32/metrics.jsonl" \
    --tol 2e-3 --first-tol 1e-5 2>&1); then
    row "train 40 steps fp32" PASS "$detail; cuda ${ms_cuda} ms, cpu ${ms_cpu} ms"
  else
    row "train 40 steps fp32" FAIL "$detail"
  fi
elif [[ -e $tmp/budget-skip ]]; then
  row "train 40 steps fp32" SKIPPED "budget"
else
  row "train 40 steps fp32" FAIL "a run failed (log above)"
fi
# Offload on the GPU (pinned host arena, prefetch window on the copy stream,
# pipelined host AdamW): streaming the masters changes no bit (offload.params
# 1 against 0, both with the host optimizer, 10 KiB pieces); the host AdamW
# against the device's differs by rounding only.
off=(--set train.steps=10 --set log.every=1 --set offload.optimizer=1 --set offload.chunk_mb=0.01)
if ms_off1=$(train_run off1 cuda "${off[@]}" --set offload.params=1) &&
  ms_off0=$(train_run off0 cuda "${off[@]}" --set offload.params=0) &&
  ms_none=$(train_run none cuda --set train.steps=10 --set log.every=1) &&
  "$run" m6train export --run-dir "$tmp/run-off1" --out "$tmp/off1.safetensors" > /dev/null &&
  "$run" m6train export --run-dir "$tmp/run-off0" --out "$tmp/off0.safetensors" > /dev/null; then
  if cmp -s "$tmp/off1.safetensors" "$tmp/off0.safetensors"; then
    row "offload params 1 vs 0 (cuda)" PASS "weights identical after 10 steps; ${ms_off1} vs ${ms_off0} ms"
  else
    row "offload params 1 vs 0 (cuda)" FAIL "exported weights differ after 10 steps"
  fi
  if detail=$("$PY" "$compare" train "$tmp/run-off0/metrics.jsonl" "$tmp/run-none/metrics.jsonl" \
    --tol 1e-3 --first-tol 1e-6 2>&1); then
    row "offload optimizer 1 vs 0 (cuda)" PASS "$detail; ${ms_off0} vs ${ms_none} ms"
  else
    row "offload optimizer 1 vs 0 (cuda)" FAIL "$detail"
  fi
elif [[ -e $tmp/budget-skip ]]; then
  row "offload on cuda" SKIPPED "budget"
else
  row "offload on cuda" FAIL "a run failed (log above)"
fi

if ! limit=$(limit_s 180); then
  row "fp16 injected overflow" SKIPPED "budget"
elif M6_FAILPOINTS="$overflow_fp@$overflow_at" timeout "$limit" "$run" m6train --config "$tmp/train.yaml" \
  --run-dir "$tmp/run-fp16" --set train.device=cuda --set train.steps=30 \
  --set precision.compute=fp16 > "$tmp/fp16.txt" 2>&1; then
  if detail=$("$PY" "$compare" overflow "$tmp/run-fp16/metrics.jsonl" --step $overflow_at 2>&1); then
    row "fp16 injected overflow" PASS "$detail"
  else
    row "fp16 injected overflow" FAIL "$detail"
  fi
else
  row "fp16 injected overflow" FAIL "$(grep -m1 -i error "$tmp/fp16.txt" | cut -c1-160)"
fi

# 2-rank CUDA + NCCL, when the machine has the GPUs and a launcher.
if ((gpus >= 2)) && command -v mpirun > /dev/null; then
  mpi=(mpirun --allow-run-as-root -np 2)
  if timeout 180 "${mpi[@]}" "$run" m6train --config "$tmp/train.yaml" --run-dir "$tmp/run-nccl" \
    --set train.device=cuda --set parallel.ep=2 > "$tmp/nccl2.txt" 2>&1 &&
    timeout 240 "${mpi[@]}" "$run" m6train --config "$tmp/train.yaml" --run-dir "$tmp/run-mpi" \
      --set train.device=cpu --set parallel.ep=2 --set train.threads=2 > "$tmp/mpi2.txt" 2>&1; then
    if detail=$("$PY" "$compare" train "$tmp/run-nccl/metrics.jsonl" "$tmp/run-mpi/metrics.jsonl" \
      --tol 2e-3 --first-tol 1e-5 2>&1); then
      row "nccl 2 ranks ep 2" PASS "$detail"
    else
      row "nccl 2 ranks ep 2" FAIL "$detail"
    fi
  else
    row "nccl 2 ranks ep 2" FAIL "$(grep -m1 -i error "$tmp/nccl2.txt" "$tmp/mpi2.txt" | cut -c1-160)"
  fi
else
  row "nccl 2+ ranks" SKIPPED "$gpus GPU(s), mpirun $(command -v mpirun > /dev/null && echo present || echo absent): world of 1 only"
fi

# ---- table -------------------------------------------------------------------------------
total=$(secs)
echo
printf '%-34s %-8s %s\n' check result detail
for r in "${rows[@]}"; do
  IFS='|' read -r a b c <<< "$r"
  printf '%-34s %-8s %s\n' "$a" "$b" "$c"
done
echo "total ${total} s on $gpu_name, commit $commit"
{
  echo
  echo "All checks ran: ${total} s."
} >> "$md"
echo "wrote $md"
fail=0
for r in "${rows[@]}"; do [[ $r == *"|FAIL|"* ]] && fail=1; done
exit $fail
