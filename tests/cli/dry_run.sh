#!/usr/bin/env bash
# `m6train --config FILE --dry-run --world N` on the three M6 configs: valid
# for their intended world size (480 / 512 GPUs), under a 4 GB address-space
# limit (so nothing the size of the model is allocated: 4 GB against 4 TB
# of fp32 parameters; the mapped CUDA, cuBLASLt and NCCL libraries alone
# take about 1 GB of address space, and OpenBLAS's start-up retries its
# buffer mmap forever below that) and without their
# data (data/m6/ does not exist: the data is not opened); the parameter
# counts agree with the model spec's formula computed here from the config
# values; the per-rank expert split and bytes are printed; the pseudo config
# also reports the real model it delinks into. Refusals: a world size ep does
# not divide, and --world without --dry-run.
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3
cd "$tmp"  # data/m6/... is relative: it does not exist here

# AddressSanitizer reserves terabytes of address space for its shadow memory:
# under scripts/test.sh --sanitize the limit cannot apply (the normal build
# checks it).
vlimit=4000000
[[ -n ${ASAN_OPTIONS:-} ]] && vlimit=unlimited
dry() {  # dry CONFIG WORLD -> $tmp/CONFIG.txt
  local name
  name=$(basename "$1" .yaml)
  (ulimit -v "$vlimit"; "$M6TRAIN" --config "$M6_SOURCE_DIR/configs/$1" --dry-run --world "$2") \
    | tee "$tmp/$name.txt"
}
dry m6-1t.yaml 480
dry m6-10t.yaml 512
dry m6-10t-pseudo.yaml 512
test ! -e data

$py - "$tmp" "$M6_SOURCE_DIR/configs" <<'PY'
import re, sys
tmp, cfgdir = sys.argv[1], sys.argv[2]

def value(text, key, indent=None):
    # The config files are plain "key: value" YAML; each key used here occurs once
    # (every: is taken at the model.moe indentation).
    pat = rf"^{' ' * indent if indent else r'[ ]*'}{key}:\s*([0-9A-Za-z.]+)"
    m = re.search(pat, text, re.M)
    assert m, f"{key} not found"
    return m.group(1)

def check(name, world, pseudo=False):
    cfg = open(f"{cfgdir}/{name}.yaml").read()
    out = open(f"{tmp}/{name}.txt").read()
    V, T, d = int(value(cfg, "vocab_size")), int(value(cfg, "max_seq_len")), int(value(cfg, "d_model"))
    L, F, E = int(value(cfg, "n_layers")), int(value(cfg, "d_ff")), int(value(cfg, "experts"))
    k, ep = int(value(cfg, "prototypes")), int(value(cfg, "ep"))
    assert value(cfg, "every", 4) == "1", "these configs make every layer MoE"
    G = int(value(cfg, "groups")) if pseudo else 0
    attn = 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d
    ffn = 2 * F * d + F + d
    layer = attn + E * d + E * ffn
    base = V * d + T * d + 2 * d
    total, active = base + L * layer, base + L * (attn + E * d + k * ffn)
    unique = base + (G if G else L) * layer
    m = re.search(r"parameters: total \S+ \((\d+)\), unique \(stored\) \S+ \((\d+)\), "
                  r"active per token \S+ \((\d+)\)", out)
    assert m, out
    got = tuple(int(x) for x in m.groups())
    print(name, "total/unique/active", got, "expected", (total, unique, active))
    assert got == (total, unique, active)
    assert f"valid for {world} rank(s)" in out
    assert f"each rank holds {E // ep} of {E} experts per MoE layer" in out
    # per rank: the experts of each stored layer set (alignment padding aside)
    m = re.search(r"parameters per rank: \S+ \((\d+)\) = dense \(replicated\) \S+ \((\d+)\) "
                  r"\+ experts \S+ \((\d+)\) in (\d+) expert FFNs", out)
    assert m, out
    rank, dense, experts, ffns = (int(x) for x in m.groups())
    assert ffns == (G if G else L) * (E // ep) and rank == dense + experts
    assert ffn * ffns <= experts < (ffn + 64) * ffns, (experts, ffn * ffns)
    m = re.search(r"bytes per rank: master fp32 ([0-9.]+) GiB .* = ([0-9.]+) GiB", out)
    assert m, out
    assert abs(float(m.group(1)) - 4 * rank / 2**30) < 0.01
    # fp16: master 4 + compute copy 2 + gradients 2 + Adam 8 = 16 bytes a parameter
    assert abs(float(m.group(2)) - 16 * rank / 2**30) < 0.02, (m.group(2), 16 * rank / 2**30)
    if pseudo:
        assert "after delinking (the real model): parameters total" in out
        assert f"sharing: {L} logical layers share {G} parameter set(s)" in out

check("m6-1t", 480)
check("m6-10t", 512)
check("m6-10t-pseudo", 512, pseudo=True)
print("ok")
PY

rc=0
"$M6TRAIN" --config "$M6_SOURCE_DIR/configs/m6-1t.yaml" --dry-run --world 240 > err.txt 2>&1 || rc=$?
[[ $rc == 2 ]] && grep -q "parallel.ep: ep (480) must divide the world size (240)" err.txt \
  || { echo "FAIL: world 240 for m6-1t should be refused (rc $rc)"; cat err.txt; exit 1; }
rc=0
"$M6TRAIN" --config "$M6_SOURCE_DIR/configs/tiny.yaml" --world 4 > err.txt 2>&1 || rc=$?
[[ $rc == 2 ]] && grep -q -- "--world, --json, --device-memory and --host-memory are for --dry-run" err.txt \
  || { echo "FAIL: --world without --dry-run should be refused (rc $rc)"; cat err.txt; exit 1; }
echo "dry_run: all checks passed"
