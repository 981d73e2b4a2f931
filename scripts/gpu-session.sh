#!/usr/bin/env bash
# The one prepared call on a lent GPU machine: scripts/gpu-check.sh (does
# every CUDA path agree with the CPU?), then scripts/bench-gpu.sh (how fast
# against PyTorch?), both inside one time budget, each writing its results
# and logs under --results as it goes. The check gets 2/5 of the budget, the
# benchmark what is left; a failing check does not stop the benchmark.
#
#   PATH=/usr/local/cuda/bin:$PATH scripts/gpu-bundle.sh     (here, once)
#   device run, carry ["bundle"], timeout_s 570:
#     bundle/scripts/gpu-session.sh --results $OUT --budget 520
#
# Exit code: gpu-check's (0 all passed, 1 a check failed).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
results="" budget=520
while (($#)); do
  case $1 in
    --results) results=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    *) echo "usage: $0 --results DIR [--budget S]" >&2; exit 2 ;;
  esac
done
[[ -n $results ]] || { echo "usage: $0 --results DIR [--budget S]" >&2; exit 2; }
[[ $budget =~ ^[0-9]+$ ]] || { echo "gpu-session: --budget takes whole seconds (got '$budget')" >&2; exit 2; }
t0=$(date +%s)
"$here/gpu-check.sh" --results "$results" --budget $((budget * 2 / 5))
rc=$?
left=$((budget - ($(date +%s) - t0)))
((left > 0)) || left=0
"$here/bench-gpu.sh" --results "$results" --budget "$left"
exit $rc
