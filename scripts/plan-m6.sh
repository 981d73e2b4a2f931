#!/usr/bin/env bash
# Writes bench/results/plan-m6.md: the memory planner's verdict on the three
# M6 seed configs at their target scale (m6train --dry-run, nothing
# allocated): each as written, then with the setting the planner suggests,
# which must fit.
#   m6-1t          480 ranks, 32 GiB V100s, 64 GiB host per rank (512 GiB per 8-GPU node)
#   m6-10t         512 ranks, 80 GiB GPUs, 64 GiB host per rank: nothing fits;
#                  256 GiB host per rank (2 TiB per 8-GPU node) and micro-batch 2
#                  (accumulation 4) fit with recompute and offload
#   m6-10t-pseudo  the same GPUs: the shared model alone fits easily, but the run
#                  delinks into m6-10t, so it runs with m6-10t's setting
set -euo pipefail
cd "$(dirname "$0")/.."
M6=${M6TRAIN:-build/m6train}
out=bench/results/plan-m6.md
PY=/usr/bin/python3

# plan CONFIG WORLD DEVICE HOST [--set ...] -> markdown section
plan() {
  local cfg=$1 world=$2 dev=$3 host=$4
  shift 4
  local args=(--config "configs/$cfg.yaml" --dry-run --world "$world" --device-memory "$dev"
              --host-memory "$host" "$@")
  echo "### $cfg on $world x $dev GPUs, $host host memory per rank${*:+ ($*)}"
  echo
  echo '```'
  echo "\$ m6train ${args[*]}"
  "$M6" "${args[@]}" | sed -n '/^memory per rank/,$p'
  echo '```'
  echo
  "$M6" "${args[@]}" --json > "$tmp/plan.json"
  # The suggested setting, applied, must fit.
  local fix
  fix=$("$PY" - "$tmp/plan.json" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))["fit"]
if f["fits"] or not f["found"]:
    sys.exit(0)
s = f["suggested"]
print(f"--set train.recompute={s['recompute']} --set offload.optimizer={s['offload_optimizer']:g} "
      f"--set offload.params={s['offload_params']:g}")
PY
)
  if [[ -n $fix ]]; then
    echo "With the suggested setting:"
    echo
    echo '```'
    # shellcheck disable=SC2086
    echo "\$ m6train ${args[*]} $fix"
    # shellcheck disable=SC2086
    "$M6" "${args[@]}" $fix | sed -n '/^memory per rank/,$p'
    echo '```'
    echo
    # shellcheck disable=SC2086
    "$M6" "${args[@]}" $fix | grep -q ": fits" || { echo "plan-m6: $cfg: the suggestion does not fit" >&2; exit 1; }
  fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{
  echo "# The M6 seed layouts on paper"
  echo
  echo "Written by \`scripts/plan-m6.sh\` from \`m6train --dry-run\` (the memory planner,"
  echo "\`core/plan/memory_plan.h\`; nothing is allocated). Bytes are per rank, GPU layout:"
  echo "fp32 master weights and Adam moments, fp16 compute copy, gradients and"
  echo "activations (the configs compute in fp16), fp32 router and LayerNorm statistics."
  echo "Buffers are sized as m6train allocates them: the expert-side buffers of an MoE"
  echo "layer hold the worst case that capacity allows (every source filling its capacity"
  echo "for every local expert, with the larger of the train and eval capacity factors)."
  echo "The search tries recompute none < attention < layer and offload fractions in"
  echo "steps of 1/8 and reports the cheapest setting that fits."
  echo
  plan m6-1t 480 32GiB 64GiB
  plan m6-10t 512 80GiB 64GiB
  plan m6-10t 512 80GiB 256GiB --set train.micro_batch=2
  plan m6-10t-pseudo 512 80GiB 64GiB
  # The pseudo run delinks at step 10000 into m6-10t: run it with m6-10t's setting.
  plan m6-10t-pseudo 512 80GiB 256GiB --set train.micro_batch=2 --set train.recompute=layer \
    --set offload.optimizer=1 --set offload.params=0.75
} > "$out"
echo "plan-m6: wrote $out"
