#!/usr/bin/python3
"""Checks one `m6train debug-step --out DIR` against the PyTorch reference.

DIR holds model.safetensors (F32 weights under the export names, metadata
{"config": resolved config JSON}), batch.safetensors (I32 "inputs" and
"targets" [B,T]), grads.safetensors (d loss / d tensor, same names) and
result.json {"loss", "ce", "aux": [per MoE layer], "z": [per MoE layer]}
(optionally "dropped": [per MoE layer], compared exactly when present).

The reference (m6_torch.py, written from DESIGN.md section 3) runs forward and
backward on the same weights and batch in float32 (--double: float64; --both:
each in turn). Passes iff every quantity q has |q_m6 - q_ref| <= tol*|q_ref| and
every tensor ||g_m6 - g_ref|| <= tol*||g_ref|| (if ||g_ref|| < 1e-10:
||g_m6|| <= 1e-8), with tol = 1e-4, and the tensor names agree exactly.

Exit status: 0 pass, 1 a check failed, 2 the directory cannot be read.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import m6_torch  # noqa: E402
from safetensors_io import SafetensorsError, read_safetensors  # noqa: E402

TINY_REF_NORM = 1e-10  # below this the reference gradient counts as zero ...
TINY_ABS_LIMIT = 1e-8  # ... and m6train's must be at most this
NEAR_TIE = 1e-5  # routing margins below this may flip under fp32 rounding


class InputError(Exception):
    pass


def load_dir(d):
    try:
        weights, meta = read_safetensors(os.path.join(d, "model.safetensors"))
        batch, _ = read_safetensors(os.path.join(d, "batch.safetensors"))
        grads, _ = read_safetensors(os.path.join(d, "grads.safetensors"))
        with open(os.path.join(d, "result.json")) as f:
            result = json.load(f)
    except (OSError, SafetensorsError, ValueError) as e:
        raise InputError(str(e))
    if "config" not in meta:
        raise InputError(f"{d}/model.safetensors: __metadata__ has no 'config' (keys: {sorted(meta)})")
    for k in ("inputs", "targets"):
        if k not in batch:
            raise InputError(f"{d}/batch.safetensors: no tensor '{k}' (has {list(batch)})")
    if batch["inputs"].shape != batch["targets"].shape or batch["inputs"].ndim != 2:
        raise InputError(f"{d}/batch.safetensors: inputs {batch['inputs'].shape} and targets "
                         f"{batch['targets'].shape} must both be [B,T]")
    for k in ("loss", "ce", "aux", "z"):
        if k not in result:
            raise InputError(f"{d}/result.json: no key '{k}' (has {sorted(result)})")
    config = json.loads(meta["config"])
    return config, weights, batch, grads, result


def rel_err(a, b):
    return abs(a - b) / abs(b) if b != 0 else (0.0 if a == 0 else math.inf)


class Report:
    def __init__(self, tol):
        self.tol = tol
        self.failures = []

    def fail(self, msg):
        self.failures.append(msg)
        print(f"FAIL: {msg}")


def check_names(rep, what, have, want, shapes):
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    for n in missing:
        rep.fail(f"{what}: missing tensor '{n}'")
    for n in extra:
        rep.fail(f"{what}: unexpected tensor '{n}'")
    for n in want:
        if n in have and tuple(have[n].shape) != tuple(shapes[n]):
            rep.fail(f"{what}: tensor '{n}' has shape {list(have[n].shape)}, expected {list(shapes[n])}")


def check_shared_weights(rep, spec, weights):
    """With layer sharing the export repeats a set's tensors for every logical
    layer of the set; they must be identical."""
    for name in m6_torch.param_shapes(spec):
        l = m6_torch.layer_of(name)
        if l is None or spec.param_set(l) == l or name not in weights:
            continue
        src = f"layers.{spec.param_set(l)}." + name.split(".", 2)[2]
        if src in weights and not np.array_equal(weights[name], weights[src]):
            rep.fail(f"model: '{name}' differs from '{src}' although the layers share a parameter set")


def run_reference(spec, weights, batch, dtype):
    leaves = m6_torch.leaf_params(spec, weights, dtype)
    inputs = torch.as_tensor(batch["inputs"].astype(np.int64))
    targets = torch.as_tensor(batch["targets"].astype(np.int64))
    out = m6_torch.forward(spec, leaves, inputs, targets)
    out.loss.backward()
    return out, m6_torch.grads_by_name(spec, leaves)


def check_scalars(rep, spec, out, result):
    rows = [("loss", float(result["loss"]), out.loss.item()), ("ce", float(result["ce"]), out.ce.item())]
    n_moe = len(out.aux)
    for key, ref in (("aux", out.aux), ("z", out.z)):
        got = result[key]
        if not isinstance(got, list) or len(got) != n_moe:
            rep.fail(f"result.json: '{key}' is {got!r}, expected a list of {n_moe} values (one per MoE layer)")
            continue
        for st, g, r in zip(out.stats, got, ref):
            rows.append((f"{key}[layer {st['layer']}]", float(g), r.item()))
    print(f"{'quantity':<22} {'m6train':>16} {'reference':>16} {'rel err':>10}")
    for name, m6, ref in rows:
        e = rel_err(m6, ref)
        ok = e <= rep.tol
        print(f"{name:<22} {m6:>16.9g} {ref:>16.9g} {e:>10.2e} {'ok' if ok else 'FAIL'}")
        if not ok:
            rep.fail(f"{name}: m6train {m6!r} vs reference {ref!r} (rel err {e:.3e} > {rep.tol:g})")
    if "dropped" in result:
        want = [st["dropped"] for st in out.stats]
        if list(result["dropped"]) != want:
            rep.fail(f"result.json: dropped {result['dropped']} but the reference drops {want} slots per MoE layer")


def print_routing(rep, out, expect_drops):
    total = 0
    for st in out.stats:
        total += st["dropped"]
        print(f"MoE layer {st['layer']}: capacity {st['capacity']}, demand {st['demand']}, kept {st['kept']}, "
              f"dropped {st['dropped']} of {st['slots']} slots, min routing margin {st['margin']:.3g}")
        if st["margin"] < NEAR_TIE:
            print(f"  warning: routing margin {st['margin']:.3g} is a near-tie; fp32 rounding may choose "
                  "another expert there")
    if out.stats:
        print(f"dropped slots in all MoE layers: {total}")
    if expect_drops and total == 0:
        rep.fail("--expect-drops: the reference dropped no slot, so the dropping path went untested")


def check_grads(rep, shapes, grads_m6, grads_ref):
    rows = []
    for name in shapes:
        if name not in grads_m6:
            continue
        g_ref = grads_ref[name].detach().double()
        g_m6 = torch.as_tensor(grads_m6[name]).double()
        ref_norm = g_ref.norm().item()
        if not np.isfinite(grads_m6[name]).all():
            rows.append((math.inf, name, ref_norm, "non-finite values", False))
            continue
        if ref_norm < TINY_REF_NORM:
            m6_norm = g_m6.norm().item()
            score = m6_norm / TINY_ABS_LIMIT
            rows.append((score, name, ref_norm, f"|g_m6| {m6_norm:.2e}", m6_norm <= TINY_ABS_LIMIT))
        else:
            e = (g_m6 - g_ref).norm().item() / ref_norm
            rows.append((e / rep.tol, name, ref_norm, f"{e:.2e}", e <= rep.tol))
    rows.sort(key=lambda r: -r[0])
    print(f"{'tensor':<44} {'|g_ref|':>10} {'rel err':>18}")
    for _, name, ref_norm, err, ok in rows:
        print(f"{name:<44} {ref_norm:>10.3e} {err:>18} {'ok' if ok else 'FAIL'}")
        if not ok:
            rep.fail(f"gradient of '{name}': {err} (|g_ref| {ref_norm:.3e}, tol {rep.tol:g})")


def check_dir(d, dtype, tol=1e-4, expect_drops=False):
    """Returns the list of failure messages (empty = pass)."""
    config, weights, batch, grads, result = load_dir(d)
    try:
        spec = m6_torch.spec_from_config(config)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{d}/model.safetensors: config: {e}")
    rep = Report(tol)
    shapes = m6_torch.param_shapes(spec)
    B, T = batch["inputs"].shape
    print(f"== {d}: reference in {str(dtype).replace('torch.', '')}, B={B} T={T} d={spec.d_model} "
          f"L={spec.n_layers} E={spec.moe.experts} router={spec.moe.router} top_k={spec.moe.top_k} "
          f"prototypes={spec.moe.prototypes} capacity_factor={spec.moe.capacity_factor}")
    check_names(rep, "model.safetensors", weights, shapes, shapes)
    check_names(rep, "grads.safetensors", grads, shapes, shapes)
    if any(f.startswith("model.safetensors") for f in rep.failures):
        return rep.failures  # the reference cannot run without every weight
    check_shared_weights(rep, spec, weights)
    out, grads_ref = run_reference(spec, weights, batch, dtype)
    check_scalars(rep, spec, out, result)
    print_routing(rep, out, expect_drops)
    check_grads(rep, shapes, grads, grads_ref)
    return rep.failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="the --out directory of m6train debug-step")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--double", action="store_true", help="run the reference in float64")
    g.add_argument("--both", action="store_true", help="check against float32 and float64 references")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    ap.add_argument("--expect-drops", action="store_true",
                    help="fail unless the reference drops at least one slot (capacity test)")
    args = ap.parse_args(argv)
    dtypes = [torch.float32, torch.float64] if args.both else [torch.float64 if args.double else torch.float32]
    failures = []
    try:
        for dt in dtypes:
            failures += [f"[{str(dt).replace('torch.', '')}] {f}" for f in
                         check_dir(args.dir, dt, args.tol, args.expect_drops)]
    except InputError as e:
        print(f"check_step: {e}", file=sys.stderr)
        return 2
    if failures:
        print(f"check_step: {args.dir}: {len(failures)} failure(s)")
        return 1
    print(f"check_step: {args.dir}: pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
