#!/usr/bin/python3
"""Self-test of the PyTorch reference (m6_torch.py), check_step.py and the
Python safetensors reader/writer, without m6train:

- the dense model equals one built from torch.nn layers (Embedding, LayerNorm,
  MultiheadAttention, Linear, F.gelu, F.cross_entropy) in loss and gradients;
- the gradient of every config kind matches torch.autograd.gradcheck (float64);
- routing, capacity and dropping match hand-worked examples and a slow
  per-token implementation written separately below;
- check_step.py passes a directory written from the reference itself and fails
  when a gradient, a loss, a name or a drop count is perturbed.

Run: /usr/bin/python3 tests/ref/self_test.py [-v]
"""

import copy
import json
import math
import os
import shutil
import sys
import tempfile
import unittest
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_step  # noqa: E402
import m6_torch  # noqa: E402
from safetensors_io import SafetensorsError, read_safetensors, write_safetensors  # noqa: E402


def make_config(d=8, heads=2, layers=2, ff=12, vocab=11, max_seq=6, **moe):
    """A config dict in the layout of m6train's config.json (nested sections)."""
    cfg = {"model": {"vocab_size": vocab, "max_seq_len": max_seq, "d_model": d, "n_heads": heads,
                     "n_layers": layers, "d_ff": ff, "moe": {"every": 0, "experts": 0}},
           "train": {"seq_len": max_seq, "micro_batch": 2, "global_batch": 2}}
    cfg["model"]["moe"].update(moe)
    return cfg


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def random_params(spec, seed, dtype=torch.float64, scale=1.0):
    """Weights with non-trivial LN/bias values and router logits large enough
    that routing is not a near-tie (init_params' 0.02 is for training)."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for name, shape in m6_torch.param_shapes(spec).items():
        t = torch.randn(shape, generator=g, dtype=torch.float64)
        if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "ln_f.weight":
            t = 1.0 + 0.1 * t
        elif "router" in name:
            t = 1.0 * t * scale
        else:
            t = 0.3 * t * scale
        out[name] = t.to(dtype)
    return out


def random_batch(spec, B, T, seed, ignore=True):
    g = torch.Generator().manual_seed(seed + 1000)
    inputs = torch.randint(0, spec.vocab_size, (B, T), generator=g)
    targets = torch.randint(0, spec.vocab_size, (B, T), generator=g)
    if ignore:
        targets[0, 1] = -1  # an ignored position
    return inputs, targets


def loss_and_grads(spec, params, inputs, targets, **kw):
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
    out = m6_torch.forward(spec, leaves, inputs, targets, **kw)
    out.loss.backward()
    # An expert that receives no token has no gradient at all: count it as zero.
    return out, OrderedDict((k, torch.zeros_like(v) if v.grad is None else v.grad) for k, v in leaves.items())


# ---- an independent dense GPT from torch.nn ----------------------------------------


class NnBlock(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = nn.MultiheadAttention(d, heads, bias=True, batch_first=True)
        self.ln2 = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = nn.Linear(d, ff)
        self.fc2 = nn.Linear(ff, d)

    def forward(self, x):
        T = x.shape[1]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # True = not allowed
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class NnGpt(nn.Module):
    def __init__(self, spec):
        super().__init__()
        d = spec.d_model
        self.tok = nn.Embedding(spec.vocab_size, d)
        self.pos = nn.Embedding(spec.max_seq_len, d)
        self.blocks = nn.ModuleList(NnBlock(d, spec.n_heads, spec.d_ff) for _ in range(spec.n_layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)

    def forward(self, inputs, targets):
        T = inputs.shape[1]
        x = self.tok(inputs) + self.pos(torch.arange(T))[None]
        for b in self.blocks:
            x = b(x)
        logits = F.linear(self.ln_f(x), self.tok.weight)
        t = targets.clone()
        t[t < 0] = -100
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=-100)

    @staticmethod
    def name_map(spec):
        """export name -> this module's parameter name."""
        m = {"tok_emb.weight": "tok.weight", "pos_emb.weight": "pos.weight",
             "ln_f.weight": "ln_f.weight", "ln_f.bias": "ln_f.bias"}
        for l in range(spec.n_layers):
            p, q = f"layers.{l}.", f"blocks.{l}."
            m.update({p + "ln1.weight": q + "ln1.weight", p + "ln1.bias": q + "ln1.bias",
                      p + "attn.qkv.weight": q + "attn.in_proj_weight", p + "attn.qkv.bias": q + "attn.in_proj_bias",
                      p + "attn.proj.weight": q + "attn.out_proj.weight",
                      p + "attn.proj.bias": q + "attn.out_proj.bias",
                      p + "ln2.weight": q + "ln2.weight", p + "ln2.bias": q + "ln2.bias",
                      p + "mlp.fc1.weight": q + "fc1.weight", p + "mlp.fc1.bias": q + "fc1.bias",
                      p + "mlp.fc2.weight": q + "fc2.weight", p + "mlp.fc2.bias": q + "fc2.bias"})
        return m


# ---- a slow per-token MoE, written separately from m6_torch.moe_layer -------------------


def naive_moe_layer(spec, x, params, prefix, capacity_factor):
    m = spec.moe
    N = x.shape[0]
    E = m.experts
    G = 1 if m.router == "topk" else m.prototypes
    gs = E // G
    S = m.top_k if m.router == "topk" else G
    logits = x @ params[prefix + "router.weight"].t()
    choices, gates, probs = [], [], []
    for n in range(N):
        pn = [torch.softmax(logits[n, g * gs:(g + 1) * gs], 0) for g in range(G)]
        probs.append(pn)
        if m.router == "topk":
            ids = sorted(range(E), key=lambda e: (-pn[0][e].item(), e))[:S]
            ch, gt = ids, [pn[0][e] for e in ids]
        else:
            loc = [min(range(gs), key=lambda j: (-pn[g][j].item(), j)) for g in range(G)]
            ch, gt = [g * gs + loc[g] for g in range(G)], [pn[g][loc[g]] for g in range(G)]
        if m.normalize:
            tot = sum(gt)
            gt = [v / tot for v in gt]
        choices.append(ch)
        gates.append(gt)
    cap = N * S if capacity_factor == 0 else max(m.min_capacity, math.ceil(capacity_factor * N * S / E))
    used = [0] * E
    kept = [[False] * S for _ in range(N)]
    for s in range(S):
        for n in range(N):
            e = choices[n][s]
            if used[e] < cap:
                used[e] += 1
                kept[n][s] = True
    rows = []
    for n in range(N):
        acc = torch.zeros_like(x[n])
        for s in range(S):
            if kept[n][s]:
                q = f"{prefix}experts.{choices[n][s]}."
                h = F.gelu(params[q + "fc1.weight"] @ x[n] + params[q + "fc1.bias"], approximate="tanh")
                acc = acc + gates[n][s] * (params[q + "fc2.weight"] @ h + params[q + "fc2.bias"])
        rows.append(acc)
    y = torch.stack(rows)
    aux_g, z_g = [], []
    for g in range(G):
        a = 0
        for j in range(gs):
            e = g * gs + j
            f = sum(1 for n in range(N) for s in range(S) if choices[n][s] == e) / (N * (S // G))
            P = sum(probs[n][g][j] for n in range(N)) / N
            a = a + f * P
        aux_g.append(gs * a)
        z_g.append(sum(torch.logsumexp(logits[n, g * gs:(g + 1) * gs], 0) ** 2 for n in range(N)) / N)
    stats = dict(capacity=cap, dropped=sum(1 for n in range(N) for s in range(S) if not kept[n][s]),
                 demand=[sum(1 for n in range(N) for s in range(S) if choices[n][s] == e) for e in range(E)],
                 kept=used, slots=N * S, margin=math.inf)
    return y, sum(aux_g) / G, sum(z_g) / G, stats


MOE_CASES = {
    "top1": dict(every=2, experts=4, top_k=1, capacity_factor=1.0, min_capacity=1),
    "top1_norm": dict(every=1, experts=3, top_k=1, normalize_gates="true", capacity_factor=0),
    "top2_drop": dict(every=1, experts=4, top_k=2, capacity_factor=0.5, min_capacity=1,
                      aux_loss_coef=0.1, z_loss_coef=0.01),
    "top2_nonorm": dict(every=2, experts=4, top_k=2, normalize_gates="false", capacity_factor=1.25),
    "topk_all": dict(every=1, experts=3, top_k=3, capacity_factor=1.0),
    "prototypes": dict(every=1, experts=4, router="prototypes", prototypes=2, capacity_factor=1.25),
    "prototypes_drop": dict(every=1, experts=6, router="prototypes", prototypes=2, capacity_factor=0.5,
                            min_capacity=1, aux_loss_coef=0.1, z_loss_coef=0.01),
    "dropless": dict(every=1, experts=4, top_k=2, capacity_factor=0, min_capacity=0),
}


class ConfigTest(unittest.TestCase):
    def test_spec_from_resolved_config(self):
        cfg = make_config(d=16, heads=4, layers=4, **MOE_CASES["prototypes"])
        cfg["model"]["moe"]["normalize_gates"] = "auto"
        spec = m6_torch.spec_from_config(json.dumps(cfg))
        self.assertEqual((spec.d_model, spec.n_heads, spec.n_layers), (16, 4, 4))
        self.assertEqual((spec.moe.groups, spec.moe.slots), (2, 2))
        self.assertFalse(spec.moe.normalize)  # auto is off for prototypes
        self.assertEqual([spec.is_moe_layer(l) for l in range(4)], [True] * 4)
        cfg = make_config(layers=4, every=2, experts=4, top_k=2)
        spec = m6_torch.spec_from_config(cfg)
        self.assertEqual([spec.is_moe_layer(l) for l in range(4)], [False, True, False, True])
        self.assertTrue(spec.moe.normalize)  # auto with top_k 2
        for v, want in (("true", True), ("false", False), (True, True), (False, False)):
            cfg["model"]["moe"]["normalize_gates"] = v
            self.assertEqual(m6_torch.spec_from_config(cfg).moe.normalize, want)
        cfg["model"]["moe"]["normalize_gates"] = "maybe"
        with self.assertRaises(ValueError):
            m6_torch.spec_from_config(cfg)

    def test_names_and_shapes(self):
        spec = m6_torch.spec_from_config(make_config(d=8, ff=12, layers=2, every=2, experts=3))
        shapes = m6_torch.param_shapes(spec)
        self.assertEqual(shapes["layers.0.attn.qkv.weight"], (24, 8))
        self.assertEqual(shapes["layers.0.mlp.fc1.weight"], (12, 8))
        self.assertEqual(shapes["layers.1.moe.router.weight"], (3, 8))
        self.assertEqual(shapes["layers.1.moe.experts.2.fc2.weight"], (8, 12))
        self.assertNotIn("layers.1.mlp.fc1.weight", shapes)
        self.assertNotIn("layers.0.moe.router.weight", shapes)
        self.assertEqual(len(shapes), 2 + 12 + 8 + 1 + 3 * 4 + 2)

    def test_sharing_sets(self):
        spec = m6_torch.spec_from_config(make_config(layers=4))
        spec.sharing_groups = 2
        self.assertEqual([spec.param_set(l) for l in range(4)], [0, 0, 2, 2])


class SafetensorsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="m6_ref_st_")

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_round_trip(self):
        path = os.path.join(self.dir, "a.safetensors")
        ts = OrderedDict([("w", np.arange(6, dtype=np.float32).reshape(2, 3)), ("ids", np.array([1, -2], np.int32)),
                          ("s", np.array(3.5, np.float32)), ("e", np.zeros((0, 4), np.float32)),
                          ("b", np.array([1, 2, 3], np.uint8))])
        write_safetensors(path, ts, {"config": '{"a": 1}'})
        back, meta = read_safetensors(path)
        self.assertEqual(list(back), list(ts))
        self.assertEqual(meta, {"config": '{"a": 1}'})
        for k in ts:
            self.assertEqual(back[k].dtype, ts[k].dtype)
            self.assertEqual(back[k].shape, ts[k].shape)
            np.testing.assert_array_equal(back[k], ts[k])
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
        self.assertEqual(n % 8, 0)

    def test_bf16_and_corruption(self):
        # Laid out by hand: BF16 1.0 = 0x3f80, -2.0 = 0xc000.
        path = os.path.join(self.dir, "b.safetensors")
        header = json.dumps({"x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
        good = len(header).to_bytes(8, "little") + header + np.array([0x3F80, 0xC000], "<u2").tobytes()
        write_file(path, good)
        back, _ = read_safetensors(path)
        np.testing.assert_array_equal(back["x"], np.array([1.0, -2.0], np.float32))
        for bad in (good[:-1], good + b"x", (10 ** 6).to_bytes(8, "little") + good[8:],
                    good.replace(b"BF16", b"BF17")):
            write_file(path, bad)
            with self.assertRaises(SafetensorsError):
                read_safetensors(path)


class DenseModelTest(unittest.TestCase):
    def test_equals_torch_nn_model(self):
        spec = m6_torch.spec_from_config(make_config(d=12, heads=3, layers=3, ff=20, vocab=17, max_seq=7))
        params = random_params(spec, seed=1)
        inputs, targets = random_batch(spec, 3, 6, seed=1)
        out, grads = loss_and_grads(spec, params, inputs, targets)

        ref = NnGpt(spec).double()
        names = NnGpt.name_map(spec)
        self.assertEqual(sorted(names), sorted(params))
        mod_params = dict(ref.named_parameters())
        self.assertEqual(sorted(names.values()), sorted(mod_params))
        with torch.no_grad():
            for k, v in params.items():
                mod_params[names[k]].copy_(v)
        loss = ref(inputs, targets)
        loss.backward()
        self.assertAlmostEqual(out.loss.item(), loss.item(), delta=1e-12 * abs(loss.item()))
        for k in params:
            g_ref = mod_params[names[k]].grad
            err = (grads[k] - g_ref).norm().item() / g_ref.norm().item()
            self.assertLess(err, 1e-10, k)

    def test_ce_is_the_mean_over_targets_not_ignored(self):
        spec = m6_torch.spec_from_config(make_config())
        params = random_params(spec, seed=2)
        inputs, targets = random_batch(spec, 2, 5, seed=2, ignore=False)
        n = targets.numel()
        only = torch.full_like(targets, -1)
        only[1, 3] = targets[1, 3]
        nll_13 = m6_torch.forward(spec, params, inputs, only).ce.item()  # one target: its own nll
        part = targets.clone()
        part[1, 3] = -1
        full_ce = m6_torch.forward(spec, params, inputs, targets).ce.item()
        part_ce = m6_torch.forward(spec, params, inputs, part).ce.item()
        self.assertAlmostEqual(part_ce * (n - 1), full_ce * n - nll_13, delta=1e-12 * n)
        part[1, 3] = -7  # any negative target is ignored
        self.assertEqual(m6_torch.forward(spec, params, inputs, part).ce.item(), part_ce)


class GradcheckTest(unittest.TestCase):
    # Small widths keep the finite differences (two forwards per element) fast;
    # MoE cases use one layer (all MoE) since test_dense covers the dense block.
    SMALL = dict(d=6, heads=2, ff=5, vocab=7, max_seq=5)

    def run_gradcheck(self, cfg, seed):
        spec = m6_torch.spec_from_config(cfg)
        params = random_params(spec, seed=seed)
        inputs, targets = random_batch(spec, 2, 4, seed=seed)
        names = list(params)
        out = m6_torch.forward(spec, params, inputs, targets)
        for st in out.stats:  # a near-tie would make finite differences jump
            self.assertGreater(st["margin"], 1e-5, f"seed {seed} gives a near-tie; pick another")

        def fn(*ts):
            return m6_torch.forward(spec, dict(zip(names, ts)), inputs, targets).loss

        leaves = tuple(params[k].clone().requires_grad_(True) for k in names)
        self.assertTrue(torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5))
        return out

    def moe_config(self, case):
        return make_config(layers=1, **self.SMALL, **dict(MOE_CASES[case], every=1))

    def test_dense(self):
        self.run_gradcheck(make_config(**self.SMALL), seed=3)

    def test_top2_with_drops(self):
        out = self.run_gradcheck(self.moe_config("top2_drop"), seed=4)
        self.assertGreater(sum(st["dropped"] for st in out.stats), 0)

    def test_prototypes_with_drops(self):
        out = self.run_gradcheck(self.moe_config("prototypes_drop"), seed=5)
        self.assertGreater(sum(st["dropped"] for st in out.stats), 0)

    def test_top1_normalized(self):
        self.run_gradcheck(self.moe_config("top1_norm"), seed=6)

    def test_top2_unnormalized(self):
        self.run_gradcheck(self.moe_config("top2_nonorm"), seed=7)

    def test_topk_all(self):
        self.run_gradcheck(self.moe_config("topk_all"), seed=7)


class RoutingTest(unittest.TestCase):
    def test_capacity_slot_major_hand_example(self):
        # 5 tokens, 2 slots, 3 experts, capacity 2. Slot 0: e0 <- t0,t1 (t2
        # dropped), e1 <- t3, e2 <- t4. Slot 1: t0->e1 kept (2nd), t1->e2 kept
        # (2nd), t2->e1 dropped, t3->e0 dropped, t4->e1 dropped. Token-major
        # claiming would keep t2's e1 instead of t1's... and so differs.
        choice = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0], [2, 1]])
        keep = m6_torch.capacity_keep(choice, 3, 2)
        want = torch.tensor([[1, 1], [1, 1], [0, 0], [1, 0], [1, 0]], dtype=torch.bool)
        self.assertTrue(torch.equal(keep, want), keep)
        self.assertTrue(torch.equal(m6_torch.capacity_keep(choice, 3, 10), torch.ones(5, 2, dtype=torch.bool)))
        self.assertEqual(int(m6_torch.capacity_keep(choice, 3, 0).sum()), 0)

    def test_capacity_formula(self):
        spec = m6_torch.spec_from_config(make_config(every=1, experts=8, top_k=2, min_capacity=4))
        self.assertEqual(m6_torch.capacity(spec, 32, 1.25), 10)  # ceil(1.25*32*2/8)
        self.assertEqual(m6_torch.capacity(spec, 32, 0.25), 4)  # min_capacity
        self.assertEqual(m6_torch.capacity(spec, 33, 1.0), 9)  # ceil(8.25)
        self.assertEqual(m6_torch.capacity(spec, 32, 0), 64)  # dropless: every slot fits

    def test_ties_go_to_lower_index(self):
        spec = m6_torch.spec_from_config(make_config(every=1, experts=4, top_k=2))
        logits = torch.tensor([[0.0, 1.0, 1.0, 1.0], [2.0, 0.0, 2.0, 2.0]])
        choice, gate, _, margin = m6_torch.route(spec, logits)
        self.assertEqual(choice.tolist(), [[1, 2], [0, 2]])
        self.assertEqual(margin, 0.0)
        torch.testing.assert_close(gate, torch.full((2, 2), 0.5))
        pspec = m6_torch.spec_from_config(make_config(every=1, experts=4, router="prototypes", prototypes=2))
        choice, gate, _, _ = m6_torch.route(pspec, torch.tensor([[0.0, 0.0, math.log(3.0), 0.0]]))
        self.assertEqual(choice.tolist(), [[0, 2]])
        torch.testing.assert_close(gate, torch.tensor([[0.5, 0.75]]))

    def test_zero_router_hand_example(self):
        # Zero router: all probs 1/E, every token picks experts 0 and 1 (ties to
        # the lower index), gates 1/2 each; capacity 2 keeps tokens 0 and 1.
        spec = m6_torch.spec_from_config(make_config(every=1, experts=4, top_k=2, capacity_factor=0.5,
                                                     min_capacity=0, layers=1))
        params = random_params(spec, seed=8)
        params["layers.0.moe.router.weight"].zero_()
        x = torch.randn(8, spec.d_model, dtype=torch.float64)
        y, aux, z, st = m6_torch.moe_layer(spec, x, params, "layers.0.moe.", 0.5)
        self.assertEqual(st["capacity"], 2)
        self.assertEqual(st["demand"], [8, 8, 0, 0])
        self.assertEqual(st["kept"], [2, 2, 0, 0])
        self.assertEqual(st["dropped"], 12)

        def expert(e, v):
            q = f"layers.0.moe.experts.{e}."
            return m6_torch.ffn(v, params[q + "fc1.weight"], params[q + "fc1.bias"], params[q + "fc2.weight"],
                                params[q + "fc2.bias"])

        want = torch.zeros_like(x)
        want[:2] = 0.5 * expert(0, x[:2]) + 0.5 * expert(1, x[:2])
        torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
        self.assertAlmostEqual(aux.item(), 1.0, places=12)  # 4 * (0.5*0.25 + 0.5*0.25)
        self.assertAlmostEqual(z.item(), math.log(4.0) ** 2, places=12)

    def test_layer_matches_per_token_loops(self):
        for name, moe in MOE_CASES.items():
            with self.subTest(case=name):
                spec = m6_torch.spec_from_config(make_config(layers=2, **moe))
                params = random_params(spec, seed=9)
                inputs, targets = random_batch(spec, 2, 6, seed=9)
                out, grads = loss_and_grads(spec, params, inputs, targets)
                saved = m6_torch.moe_layer
                m6_torch.moe_layer = naive_moe_layer
                try:
                    ref, ref_grads = loss_and_grads(spec, params, inputs, targets)
                finally:
                    m6_torch.moe_layer = saved
                self.assertAlmostEqual(out.loss.item(), ref.loss.item(), delta=1e-12)
                for a, b in zip(out.aux + out.z, ref.aux + ref.z):
                    self.assertAlmostEqual(a.item(), b.item(), delta=1e-12)
                for st, rst in zip(out.stats, ref.stats):
                    for k in ("capacity", "dropped", "demand", "kept"):
                        self.assertEqual(st[k], rst[k], k)
                for k in params:
                    self.assertLess((grads[k] - ref_grads[k]).norm().item(),
                                    1e-11 * max(1.0, ref_grads[k].norm().item()), k)
                if name.endswith("drop"):
                    self.assertGreater(sum(st["dropped"] for st in out.stats), 0)


class CheckStepTest(unittest.TestCase):
    """check_step.py on a directory written like `m6train debug-step` would,
    with the reference's own float64 results in place of m6train's."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="m6_ref_check_")
        cfg = make_config(d=16, heads=2, layers=2, ff=24, vocab=32, max_seq=8, **MOE_CASES["top2_drop"])
        cfg["model"]["moe"].update(router="topk", normalize_gates="auto", prototypes=0,
                                   eval_capacity_factor=2.0)
        spec = m6_torch.spec_from_config(cfg)
        params = m6_torch.init_params(spec, seed=10, dtype=torch.float32)
        params = OrderedDict((k, v.double()) for k, v in params.items())
        inputs, targets = random_batch(spec, 2, 8, seed=10, ignore=False)
        out, grads = loss_and_grads(spec, params, inputs, targets)
        self.grads = OrderedDict((k, v.float().numpy()) for k, v in grads.items())
        self.result = {"loss": out.loss.item(), "ce": out.ce.item(), "aux": [a.item() for a in out.aux],
                       "z": [z.item() for z in out.z], "dropped": [st["dropped"] for st in out.stats]}
        write_safetensors(os.path.join(self.dir, "model.safetensors"),
                          OrderedDict((k, v.float().numpy()) for k, v in params.items()),
                          {"config": json.dumps(cfg)})
        write_safetensors(os.path.join(self.dir, "batch.safetensors"),
                          {"inputs": inputs.int().numpy(), "targets": targets.int().numpy()})
        self.write()

    def write(self):
        write_safetensors(os.path.join(self.dir, "grads.safetensors"), self.grads)
        with open(os.path.join(self.dir, "result.json"), "w") as f:
            json.dump(self.result, f)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def check(self, *extra):
        with open(os.devnull, "w") as null:
            saved, sys.stdout = sys.stdout, null
            try:
                return check_step.main([self.dir, *extra])
            finally:
                sys.stdout = saved

    def test_passes_on_reference_output(self):
        self.assertEqual(self.check("--both", "--expect-drops"), 0)

    def test_fails_on_perturbed_gradient(self):
        g = self.grads["layers.1.moe.experts.2.fc1.weight"]
        g.flat[0] += 1e-3 * np.linalg.norm(g)
        self.write()
        self.assertEqual(self.check(), 1)
        self.assertEqual(self.check("--double"), 1)

    def test_fails_on_zero_router_gradient(self):
        self.grads["layers.0.moe.router.weight"][:] = 0
        self.write()
        self.assertEqual(self.check(), 1)

    def test_fails_on_perturbed_loss(self):
        self.result["loss"] *= 1 + 1e-3
        self.write()
        self.assertEqual(self.check(), 1)

    def test_fails_on_wrong_aux_count(self):
        self.result["aux"] = self.result["aux"][:1]
        self.write()
        self.assertEqual(self.check(), 1)

    def test_fails_on_wrong_drop_count(self):
        self.result["dropped"][0] += 1
        self.write()
        self.assertEqual(self.check(), 1)

    def test_fails_on_missing_or_extra_name(self):
        del self.grads["ln_f.bias"]
        self.write()
        self.assertEqual(self.check(), 1)
        self.grads["ln_f.bias"] = np.zeros(16, np.float32)
        self.grads["layers.0.mlp.fc1.weight"] = np.zeros((24, 16), np.float32)
        self.write()
        self.assertEqual(self.check(), 1)

    def test_unreadable_dir_is_exit_2(self):
        os.remove(os.path.join(self.dir, "result.json"))
        with open(os.devnull, "w") as null:
            saved, sys.stderr = sys.stderr, null
            try:
                self.assertEqual(self.check(), 2)
            finally:
                sys.stderr = saved

    def test_expect_drops_fails_without_drops(self):
        cfg_path = os.path.join(self.dir, "model.safetensors")
        w, meta = read_safetensors(cfg_path)
        cfg = json.loads(meta["config"])
        cfg["model"]["moe"]["capacity_factor"] = 0  # dropless: the reference drops nothing
        write_safetensors(cfg_path, w, {"config": json.dumps(cfg)})
        self.assertEqual(self.check("--expect-drops"), 1)


if __name__ == "__main__":
    torch.manual_seed(0)
    unittest.main()
