#!/usr/bin/env bash
# configs/m6-10t-shape.yaml (M6-10T's 48 layers x 10240 experts, 80 prototype
# groups, one shared set delinked in the run; widths shrunk) on 8 ranks with
# ep 8 (label `scale`):
#  A  8 ranks: steps 1-2 pseudo, in-run delink at 2 (eval loss bit-identical
#     before and after), step 3, checkpoint at 3 (491,520 experts: 1,966,080
#     expert tensors), step 4;
#  B  the step-3 checkpoint resumed on 4 ranks (ep 4) and on 2 ranks (ep 2):
#     step 4's loss equals A's within 1e-5 relative (the tolerance of a resume
#     on another layout, README "Checkpoints").
# Prints the checkpoint's tensor count and size, save and load seconds and
# the all-to-all seconds per step (the numbers README's Scale section quotes).
set -euo pipefail
: "${M6TRAIN:?}" "${M6_SOURCE_DIR:?}"
source "$M6_SOURCE_DIR/tests/cli/corpus.bash"
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset M6_FAILPOINTS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3
command -v mpirun > /dev/null || { echo "FAIL: mpirun not found (apt-get install openmpi-bin)"; exit 1; }
run() {
  local np=$1
  shift
  mpirun --oversubscribe --allow-run-as-root -x OMP_WAIT_POLICY -x OMP_NUM_THREADS -np "$np" \
    "$M6TRAIN" --config "$M6_SOURCE_DIR/configs/m6-10t-shape.yaml" \
    --set "data.train=$tmp/data/train_*.bin" --set "data.val=$tmp/data/val_*.bin" \
    --set train.steps=4 --set checkpoint.every=3 --set parallel.ep="$np" "$@"
}

"$M6TRAIN" data build --input "${M6_CORPUS[@]}" /usr/share/common-licenses/GPL-3 \
  --output "$tmp/data" --val-fraction 0.1 > /dev/null

echo "== A: 8 ranks, ep 8 (pseudo steps, in-run delink at step 2, checkpoint at 3)"
SECONDS=0
run 8 --run-dir "$tmp/A" | grep -v '^step' | tee "$tmp/A.log"
echo "A took ${SECONDS} s"
grep -q "delink: step 2: .*(identical)" "$tmp/A.log"
for np in 4 2; do
  echo "== B$np: the step-3 checkpoint resumed on $np ranks, ep $np"
  SECONDS=0
  run "$np" --run-dir "$tmp/B$np" --resume "$tmp/A/checkpoints/step_00000003" |
    grep -v '^step' | tee "$tmp/B$np.log"
  echo "B$np took ${SECONDS} s"
done

$py - "$tmp" <<'PY'
import json, os, struct, sys
tmp = sys.argv[1]
recs = lambda run: [json.loads(l) for l in open(f"{tmp}/{run}/metrics.jsonl")]
a = recs("A")
loss = lambda rs: {r["step"]: r["loss"] for r in rs if r["kind"] == "train"}
la = loss(a)
assert sorted(la) == [1, 2, 3, 4], la
dl = [r for r in a if r["kind"] == "delink"]
assert len(dl) == 1 and dl[0]["identical"] and dl[0]["step"] == 2, dl
assert dl[0]["params_after"] == 48 * (10240 * (2 * 8 * 8 + 8 + 8) + 10240 * 8 + 4 * 8 + 3 * 8 * 8 + 3 * 8 + 8 * 8 + 8) + 256 * 8 + 16 * 8 + 2 * 8, dl
ck = os.path.join(tmp, "A/checkpoints/step_00000003")
man = json.load(open(f"{ck}/manifest.json"))
assert man["config"]["model"]["sharing"]["groups"] == 0
n_tensors, n_bytes, expert_tensors = 0, 0, 0
for name, info in man["files"].items():
    n_bytes += info["size"]
    with open(f"{ck}/{name}", "rb") as f:
        hdr = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    names = [k for k in hdr if k != "__metadata__"]
    n_tensors += len(names)
    expert_tensors += sum(".moe.experts." in k for k in names)
assert expert_tensors == 3 * 48 * 10240 * 4, expert_tensors  # weights, m, v
assert len(man["files"]) == 3 * (1 + 8)
ev = lambda rs, kind: [r for r in rs if r["kind"] == kind]
save = [r for r in ev(a, "checkpoint") if r["step"] == 3][0]
save_s, save_cpu = save["seconds"], save.get("cpu_seconds", float("nan"))
a2a = {r["step"]: round(r["a2a_s"], 2) for r in ev(a, "comm")}
comm = {r["step"]: round(r["comm_s"], 2) for r in ev(a, "comm")}
print(f"checkpoint step 3: {n_tensors} tensors ({expert_tensors} expert tensors) in "
      f"{len(man['files'])} files, {n_bytes / 2**20:.0f} MiB; saved by 8 ranks in {save_s:.1f} s "
      f"({save_cpu:.1f} CPU s on rank 0)")
print(f"delink: {dl[0]['seconds']:.1f} s; seconds per rank per step in all-to-all(v): {a2a}, "
      f"in all collectives: {comm}")
for np in (4, 2):
    b = recs(f"B{np}")
    lb = loss(b)
    load = ev(b, "resume")[0]
    load_s, load_cpu = load["seconds"], load.get("cpu_seconds", float("nan"))
    want, got = la[4], lb[4]
    print(f"resume on {np} ranks (ep {np}): loaded in {load_s:.1f} s ({load_cpu:.1f} CPU s on rank 0); step 4 loss {got!r} vs {want!r} "
          f"(relative difference {abs(got - want) / abs(want):.2e})")
    assert abs(got - want) <= 1e-5 * abs(want), f"B{np}: step 4 loss {got} differs from {want}"
print("ok")
PY
echo "scale_m6_10t_shape: all checks passed"
