#!/usr/bin/env python3
"""Comparisons of scripts/gpu-check.sh (CUDA run against the CPU run).

  gpu_compare.py step CUDA_DIR CPU_DIR --loss-tol R --grad-tol R
      Two `m6train debug-step` outputs: the loss (relative difference) and
      every gradient tensor, by its error normalised by the tensor's largest
      CPU value: max|g_cuda - g_cpu| / max|g_cpu|. NaN never passes.
  gpu_compare.py train CUDA_METRICS CPU_METRICS --tol R [--first-tol R]
      The logged training losses of two runs, step by step: relative
      difference <= R at every logged step (<= first-tol at the first one).
  gpu_compare.py overflow METRICS --step S
      An fp16 run with an injected overflow after S steps: the step S+1 was
      skipped (a "skip" record), the run went on, and when the records carry
      a loss scale, it halved at the skip.

Prints one line (the table's detail) and exits 0 (pass) or 1 (fail).
"""
import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
from safetensors_io import read_safetensors  # noqa: E402


def _tensors(path):
    t = read_safetensors(path)
    # read_safetensors returns (tensors, metadata) or a mapping, by version
    if isinstance(t, tuple):
        t = t[0]
    return {k: np.asarray(v, dtype=np.float64) for k, v in t.items()}


def step(a, b, loss_tol, grad_tol):
    ra = json.load(open(os.path.join(a, "result.json")))
    rb = json.load(open(os.path.join(b, "result.json")))
    la, lb = float(ra["loss"]), float(rb["loss"])
    loss_err = abs(la - lb) / max(abs(lb), 1e-30)
    ga = _tensors(os.path.join(a, "grads.safetensors"))
    gb = _tensors(os.path.join(b, "grads.safetensors"))
    if sorted(ga) != sorted(gb):
        print(f"different tensor lists: {sorted(set(ga) ^ set(gb))[:4]}")
        return 1
    worst, worst_name = -1.0, ""
    for name in gb:
        x, y = ga[name], gb[name]
        if x.shape != y.shape:
            print(f"{name}: shape {x.shape} vs {y.shape}")
            return 1
        scale = float(np.max(np.abs(y))) if y.size else 0.0
        diff = float(np.max(np.abs(x - y))) if y.size else 0.0
        err = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
        if not np.all(np.isfinite(x)):
            err = math.inf
        if not err <= worst:
            worst, worst_name = err, name
    ok = loss_err <= loss_tol and worst <= grad_tol
    print(f"loss {la:.6f} vs {lb:.6f} (rel {loss_err:.1e} <= {loss_tol:g}); "
          f"{len(gb)} grads, worst {worst:.1e} <= {grad_tol:g} ({worst_name})")
    return 0 if ok else 1


def _train_losses(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    return {r["step"]: r["loss"] for r in rows if r.get("kind") == "train" and r.get("loss") is not None}


def train(a, b, tol, first_tol):
    la, lb = _train_losses(a), _train_losses(b)
    steps = sorted(set(la) & set(lb))
    if not steps or len(steps) != len(lb):
        print(f"logged steps differ: cuda {sorted(la)} cpu {sorted(lb)}")
        return 1
    worst, at = 0.0, steps[0]
    ok = True
    for i, s in enumerate(steps):
        e = abs(la[s] - lb[s]) / max(abs(lb[s]), 1e-30)
        if not math.isfinite(la[s]):
            e = math.inf
        lim = first_tol if i == 0 else tol
        ok = ok and e <= lim
        if not e <= worst:
            worst, at = e, s
    first = abs(la[steps[0]] - lb[steps[0]]) / max(abs(lb[steps[0]]), 1e-30)
    print(f"{len(steps)} logged steps to {steps[-1]}: first rel {first:.1e} (<= {first_tol:g}), "
          f"worst rel {worst:.1e} at step {at} (<= {tol:g}); final {la[steps[-1]]:.4f} vs {lb[steps[-1]]:.4f}")
    return 0 if ok else 1


def overflow(path, at):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    skips = [r for r in rows if r.get("kind") == "skip"]
    hit = [r for r in skips if r.get("step") in (at, at + 1)]
    train_rows = [r for r in rows if r.get("kind") == "train"]
    scales = [(r["step"], r["loss_scale"]) for r in train_rows if "loss_scale" in r]
    last = train_rows[-1] if train_rows else {}
    msg = (f"skip records {[(r.get('step'), r.get('reason')) for r in skips][:4]}, "
           f"steps run {last.get('step')}, skipped_steps {last.get('skipped_steps')}")
    ok = bool(hit) and last.get("skipped_steps", 0) >= 1 and (last.get("loss") is not None)
    if scales:
        before = [s for st, s in scales if st <= at]
        after = [s for st, s in scales if st > at]
        msg += f", loss scale {before[-1] if before else '?'} -> {after[0] if after else '?'}"
        if before and after:
            ok = ok and after[0] <= before[-1] / 2
    else:
        msg += ", no loss_scale in the records"
    print(msg)
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("cuda")
    s.add_argument("cpu")
    s.add_argument("--loss-tol", type=float, required=True)
    s.add_argument("--grad-tol", type=float, required=True)
    t = sub.add_parser("train")
    t.add_argument("cuda")
    t.add_argument("cpu")
    t.add_argument("--tol", type=float, required=True)
    t.add_argument("--first-tol", type=float, default=None)
    o = sub.add_parser("overflow")
    o.add_argument("metrics")
    o.add_argument("--step", type=int, required=True)
    a = p.parse_args()
    if a.cmd == "step":
        return step(a.cuda, a.cpu, a.loss_tol, a.grad_tol)
    if a.cmd == "train":
        return train(a.cuda, a.cpu, a.tol, a.first_tol if a.first_tol is not None else a.tol)
    return overflow(a.metrics, a.step)


if __name__ == "__main__":
    sys.exit(main())
