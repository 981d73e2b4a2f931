#!/usr/bin/env bash
# The memory planner against measurement: for CPU runs on 1 and 4 ranks,
# dense and MoE, recompute none/attention/layer and offload 0/0.5/1, the
# planner's device and host bytes (mem_plan_bytes, mem_plan_host_bytes in
# metrics.jsonl) are within 10% of the backend arenas' high-water marks
# (mem_peak_bytes, mem_host_peak_bytes); the peak RSS is at least the arenas'
# peak; recomputation lowers the measured peak as the plan says. Then the
# fit check: a layout that does not fit train.device_memory is refused (exit
# 2, the planner's numbers and a suggestion in the message, nothing trained)
# unless train.allow_unfit=true; the planned all-to-all and all-reduce bytes
# per step match the 4-rank runs' comm records (25% / 1%: the all-to-all
# estimate assumes uniform routing); --dry-run --json reports the plan, and with
# --device-memory the smallest setting that fits.
# MEMORY_TABLE=FILE writes the comparison as a markdown table.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
tmp=$(mktemp -d)
trap '[[ -n "${KEEP_TMP:-}" ]] || rm -rf "$tmp"' EXIT
py=/usr/bin/python3

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" /usr/share/common-licenses/GPL-3 \
  --output "$tmp/data" --val-fraction 0.1 > /dev/null
cat > "$tmp/dense.yaml" <<YAML
model: {vocab_size: 256, max_seq_len: 64, d_model: 64, n_heads: 4, n_layers: 4, d_ff: 256}
data: {train: $tmp/data/train_*.bin, val: $tmp/data/val_*.bin}
train: {steps: 2, seq_len: 64, micro_batch: 4, global_batch: 16, threads: 1, device: cpu}
eval: {every: 0, batches: 1}
log: {every: 1}
YAML
cat > "$tmp/moe.yaml" <<YAML
model: {vocab_size: 256, max_seq_len: 64, d_model: 64, n_heads: 4, n_layers: 4, d_ff: 128,
        moe: {every: 2, experts: 8, router: topk, top_k: 2}}
data: {train: $tmp/data/train_*.bin, val: $tmp/data/val_*.bin}
train: {steps: 2, seq_len: 64, micro_batch: 4, global_batch: 16, threads: 1, device: cpu}
eval: {every: 0, batches: 1}
log: {every: 1}
YAML

runs=()
# run NAME CONFIG RANKS [--set ...]
run() {
  local name=$1 cfg=$2 w=$3
  shift 3
  local args=(--config "$tmp/$cfg.yaml" --run-dir "$tmp/$name" "$@")
  if [[ $w == 1 ]]; then
    "$M6TRAIN" "${args[@]}" > "$tmp/$name.out"
  else
    mpirun --oversubscribe --bind-to none -np "$w" "$M6TRAIN" "${args[@]}" > "$tmp/$name.out"
  fi
  runs+=("$name|$cfg|$w|$*")
}
run dense_w1_none dense 1
run dense_w1_layer dense 1 --set train.recompute=layer
run moe_w1_none moe 1
run moe_w1_attention moe 1 --set train.recompute=attention
run moe_w4_ep4_none moe 4 --set parallel.ep=4
run moe_w4_ep2_layer moe 4 --set parallel.ep=2 --set train.recompute=layer
run moe_w1_off05 moe 1 --set offload.optimizer=0.5 --set offload.params=0.5
run dense_w4_off1 dense 4 --set offload.optimizer=1 --set offload.params=1
run moe_w1_off1_layer moe 1 --set offload.optimizer=1 --set offload.params=0.5 --set train.recompute=layer

printf '%s\n' "${runs[@]}" > "$tmp/runs.txt"
$py - "$tmp" "${MEMORY_TABLE:-}" <<'PY'
import json, sys
tmp, table = sys.argv[1], sys.argv[2]
rows, bad, peaks = [], [], {}
for line in open(f"{tmp}/runs.txt"):
    name, cfg, w, sets = line.rstrip("\n").split("|")
    recs = [json.loads(l) for l in open(f"{tmp}/{name}/metrics.jsonl")]
    r = [x for x in recs if x["kind"] == "train"][-1]
    dev, host = r["mem_peak_bytes"], r["mem_host_peak_bytes"]
    pdev, phost, rss = r["mem_plan_bytes"], r["mem_plan_host_bytes"], r["rss_peak_bytes"]
    peaks[name] = dev
    ok = abs(pdev / dev - 1) <= 0.10 and (host == 0 and phost == 0 or abs(phost / host - 1) <= 0.10)
    ok = ok and rss >= dev + host
    settings = " ".join(s.replace("--set ", "") for s in [sets]) or "-"
    rows.append((name, cfg, w, settings.replace("--set ", ""), pdev, dev, phost, host, rss))
    print(f"{name:20s} plan {pdev:>11d} {phost:>10d}  measured {dev:>11d} {host:>10d}  "
          f"ratio {pdev/dev:.4f}  rss {rss}  {'ok' if ok else 'FAIL'}")
    if not ok:
        bad.append(name)
for a, b in [("dense_w1_none", "dense_w1_layer"), ("moe_w1_none", "moe_w1_attention")]:
    if not peaks[b] < peaks[a]:
        bad.append(f"{b} peak {peaks[b]} not below {a} {peaks[a]}")
if table:
    mib = lambda b: f"{b / 2**20:.2f}"
    with open(table, "w") as f:
        f.write("| run | config | ranks | settings | planned device MiB | measured device MiB | "
                "planned host MiB | measured host MiB | peak RSS MiB | planned / measured |\n")
        f.write("|---|---|--:|---|--:|--:|--:|--:|--:|--:|\n")
        for name, cfg, w, s, pdev, dev, phost, host, rss in rows:
            f.write(f"| {name} | {cfg} | {w} | {s.strip() or '-'} | {mib(pdev)} | {mib(dev)} | "
                    f"{mib(phost)} | {mib(host)} | {mib(rss)} | {(pdev + phost) / (dev + host):.3f} |\n")
if bad:
    sys.exit("memory plan off by more than 10% (or not lower with recompute): " + ", ".join(bad))
PY

# Bytes per step: the planner's all-to-all estimate (uniform routing) and
# all-reduce count against the comm records of the 4-rank runs (all ranks
# together there, per rank in the plan).
for name_sets in "moe_w4_ep4_none|--set parallel.ep=4" \
                 "moe_w4_ep2_layer|--set parallel.ep=2 --set train.recompute=layer"; do
  name=${name_sets%%|*}
  # shellcheck disable=SC2086
  "$M6TRAIN" --config "$tmp/moe.yaml" --dry-run --world 4 --json ${name_sets#*|} > "$tmp/$name.plan.json"
  $py - "$tmp/$name.plan.json" "$tmp/$name/metrics.jsonl" <<'PY'
import json, sys
plan = json.load(open(sys.argv[1]))["memory"]
comm = [json.loads(l) for l in open(sys.argv[2]) if '"kind":"comm"' in l][-1]
a2a, red = comm["a2a_bytes_per_step"] / 4, comm["allreduce_bytes_per_step"] / 4
print(f"{sys.argv[1]}: all-to-all planned {plan['a2a_bytes_per_step']:.0f} measured {a2a:.0f}, "
      f"all-reduce planned {plan['allreduce_bytes_per_step']:.0f} measured {red:.0f}")
assert abs(plan["a2a_bytes_per_step"] / a2a - 1) <= 0.25, "all-to-all estimate off by > 25%"
assert abs(plan["allreduce_bytes_per_step"] / red - 1) <= 0.01, "all-reduce count off by > 1%"
PY
done

# The fit check refuses before allocating, with the planner's numbers.
rc=0
"$M6TRAIN" --config "$tmp/moe.yaml" --run-dir "$tmp/unfit" --set train.device_memory=1MiB \
  > /dev/null 2> "$tmp/unfit.err" || rc=$?
cat "$tmp/unfit.err"
[[ $rc == 2 ]]
grep -q "does not fit in memory" "$tmp/unfit.err"
grep -q "fit: device .* of 1.00 MiB" "$tmp/unfit.err"
grep -q "train.allow_unfit=true" "$tmp/unfit.err"
test ! -e "$tmp/unfit/metrics.jsonl"
"$M6TRAIN" --config "$tmp/moe.yaml" --run-dir "$tmp/allowed" --set train.device_memory=1MiB \
  --set train.allow_unfit=true --max-steps 1 > /dev/null
test -s "$tmp/allowed/metrics.jsonl"

# --dry-run --json, and the smallest setting that fits a device budget.
"$M6TRAIN" --config "$tmp/moe.yaml" --dry-run --world 4 --set parallel.ep=4 --json \
  --device-memory 8MiB --host-memory 64GiB > "$tmp/plan.json"
$py - "$tmp/plan.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
m, fit = j["memory"], j["fit"]
names = [l["name"] for l in m["lines"]]
for want in ["parameters (fp32 master)", "gradients", "optimizer state (Adam m, v fp32)",
             "activations", "all-to-all buffers", "comm buckets", "workspace"]:
    assert want in names, (want, names)
assert m["device_bytes"] == sum(l["device_bytes"] for l in m["lines"])
assert m["a2a_bytes_per_step"] > 0 and m["allreduce_bytes_per_step"] > 0, m
a = m["activations_per_layer"]
assert a["moe"]["none"] > a["moe"]["attention"] > a["moe"]["layer"] > 0, a
assert not fit["fits"] and fit["found"], fit
s = fit["suggested"]
assert s["device_bytes"] <= 8 * 2**20 < m["device_bytes"], (s, m["device_bytes"])
print("dry-run json: device", m["device_bytes"], "-> suggested", s)
PY
echo "memory_plan: ok"
