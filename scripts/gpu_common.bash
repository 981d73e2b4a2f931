# Shared by scripts/gpu-check.sh and scripts/bench-gpu.sh (sourced): the time
# budget of a device call and the logs that come back from it.

# limit_s N: the time limit for the next step, N seconds or what is left
# before $deadline (minus 10 s to write the results), whichever is less;
# status 1 (and nothing printed) when under 5 s are left: skip the step.
limit_s() {
  local left=$((deadline - $(date +%s) - 10))
  ((left >= 5)) || return 1
  echo $((left < $1 ? left : $1))
}

# keep_logs DIR OUT.tgz: the small text files under DIR (console logs,
# metrics.jsonl, config.json, profile.json; no checkpoints, no data shards)
# into OUT.tgz, so that a failure on the device machine can be read here.
keep_logs() {
  local dir=$1 out=$2
  [[ -d $dir ]] || return 0
  (cd "$dir" && find . -type f -size -2M \( -name '*.txt' -o -name '*.log' -o -name '*.err' \
    -o -name '*.jsonl' -o -name '*.json' -o -name '*.yaml' \) -print0 |
    tar czf "$out" --null -T - 2> /dev/null) || true
}
