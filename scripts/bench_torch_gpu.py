#!/usr/bin/env python3
"""The PyTorch peer of scripts/bench-gpu.sh: the model of an m6train config
(GPT-2 blocks, MoE feed-forward every `moe.every` layers, top-k routing with
capacity, tied LM head, load-balancing and z losses) written the way a
PyTorch user would for speed -- bf16 autocast, SDPA causal attention, batched
expert GEMMs on a static [E, C, d] dispatch buffer, fused AdamW -- and timed
in eager mode or under torch.compile.

A timed step is m6train's step: accumulation micro-batches of forward +
backward, gradient clipping (optim.grad_clip), an AdamW update.

Model FLOPs per token follow the PaLM appendix (B): 6 N + 12 L T d, N the
parameters a token uses (embedding lookups excluded, the tied LM head
included, k of the E experts of an MoE layer), 12 L T d the attention
scores and values. MFU = FLOPs/token x tokens/s / peak, with the peak given
by --peak-tflops (bench-gpu.sh passes the measured cuBLAS bf16 peak).

  bench_torch_gpu.py --config RUN/config.json --mode eager|compile [--dtype bf16|fp32]
  bench_torch_gpu.py --config C.yaml [--set model.moe.every=0 ...] ...   (needs PyYAML)
  bench_torch_gpu.py --tiny --device cpu ...     a small shape (CI)
  bench_torch_gpu.py --gemm-peak                 bf16 matmul TFLOP/s on the device
  bench_torch_gpu.py --self-test                 the MoE dispatch against a per-token loop
  bench_torch_gpu.py --flops --config C          FLOPs per token and active parameters only
Prints a human line, and with --json one JSON object on the last line.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

TINY = {
    "model": {"vocab_size": 256, "max_seq_len": 32, "d_model": 32, "n_heads": 2, "n_layers": 2,
              "d_ff": 64, "moe": {"every": 2, "experts": 4, "top_k": 2, "capacity_factor": 1.25,
                                  "min_capacity": 4}},
    "train": {"seq_len": 32, "micro_batch": 2, "global_batch": 2},
    "optim": {},
}


class MoE(nn.Module):
    """Top-k routing (softmax over E in fp32, ties to the lower index as
    torch.topk), slot-major capacity as m6train (slot 0 of every token in
    token order, then slot 1 ...), experts as one batched GEMM over [E, C, d]."""

    def __init__(self, d, f, moe):
        super().__init__()
        self.E, self.k = int(moe["experts"]), int(moe.get("top_k", 1))
        self.cf = float(moe.get("capacity_factor", 1.25))
        self.min_cap = int(moe.get("min_capacity", 4))
        norm = moe.get("normalize_gates", "auto")
        # m6train writes "auto", "true" or "false" (config.json); YAML may give a bool
        self.normalize = self.k > 1 if norm in ("auto", None) else norm in (True, "true")
        self.aux_coef = float(moe.get("aux_loss_coef", 0.01))
        self.z_coef = float(moe.get("z_loss_coef", 0.001))
        # Under bf16 autocast the LayerNorm output arriving here is fp32; the
        # dispatch gathers and the [E, C, d] buffer move it in this dtype
        # (bench_train sets bf16 then: half the bytes, as the expert GEMMs
        # would round it anyway).
        self.dispatch_dtype = None
        E = self.E
        self.router = nn.Linear(d, E, bias=False)
        self.w1 = nn.Parameter(torch.randn(E, d, f) * 0.02)
        self.b1 = nn.Parameter(torch.zeros(E, f))
        self.w2 = nn.Parameter(torch.randn(E, f, d) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(E, d))

    def capacity(self, n):
        if self.cf == 0:
            return n * self.k  # dropless: every slot fits
        return max(self.min_cap, math.ceil(self.cf * n * self.k / self.E))

    def forward(self, x):
        shape = x.shape
        xs = x.reshape(-1, shape[-1])
        N, d, E, k = xs.shape[0], xs.shape[1], self.E, self.k
        logits = self.router(xs).float()
        probs = logits.softmax(-1)
        gate, idx = probs.topk(k, dim=-1)  # [N, k]
        if self.normalize:
            gate = gate / gate.sum(-1, keepdim=True)
        C = self.capacity(N)
        e_flat = idx.t().reshape(-1)  # slot-major: slot s of token n at s*N + n
        onehot = F.one_hot(e_flat, E)
        pos = ((onehot.cumsum(0) - 1) * onehot).sum(-1)
        keep = pos < C
        tok = torch.arange(N, device=x.device).repeat(k)
        dest = torch.where(keep, e_flat * C + pos, torch.full_like(pos, E * C))  # E*C: dropped
        xd = xs.to(self.dispatch_dtype) if self.dispatch_dtype is not None else xs
        buf = xd.new_zeros(E * C + 1, d)
        buf.index_copy_(0, dest, xd[tok])
        h = buf[: E * C].view(E, C, d)
        h = F.gelu(torch.baddbmm(self.b1.unsqueeze(1).to(h.dtype), h, self.w1.to(h.dtype)),
                   approximate="tanh")
        y = torch.baddbmm(self.b2.unsqueeze(1).to(h.dtype), h, self.w2.to(h.dtype))
        y = torch.cat([y.reshape(E * C, d), y.new_zeros(1, d)])
        w = (gate.t().reshape(-1) * keep).unsqueeze(1)
        out = torch.zeros(N, d, device=x.device, dtype=torch.float32)
        out.index_add_(0, tok, (y[dest].float() * w))
        f = onehot.float().sum(0) / (N * k)  # demand before dropping
        aux = E * (f * probs.mean(0)).sum()
        z = torch.logsumexp(logits, -1).pow(2).mean()
        return out.to(x.dtype).view(shape), self.aux_coef * aux + self.z_coef * z


class Dense(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh")), x.new_zeros(())


def attention(q, k, v):
    """SDPA (flash / memory-efficient kernels) where PyTorch has it (2.0+);
    the plain masked softmax on older versions (the CI's Debian torch)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return s.masked_fill(mask, float("-inf")).softmax(-1) @ v


class Block(nn.Module):
    def __init__(self, d, h, f, moe):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ffn = MoE(d, f, moe) if moe else Dense(d, f)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
        y, aux = self.ffn(self.ln2(x))
        return x + y, aux


class Model(nn.Module):
    def __init__(self, m):
        super().__init__()
        d, L = int(m["d_model"]), int(m["n_layers"])
        moe = m.get("moe", {}) or {}
        every = int(moe.get("every", 0))
        self.wte = nn.Embedding(int(m["vocab_size"]), d)
        self.wpe = nn.Embedding(int(m["max_seq_len"]), d)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)
        self.blocks = nn.ModuleList(
            Block(d, int(m["n_heads"]), int(m["d_ff"]),
                  moe if every > 0 and l % every == every - 1 else None) for l in range(L))
        self.lnf = nn.LayerNorm(d)

    def forward(self, inputs, targets):
        T = inputs.shape[1]
        x = self.wte(inputs) + self.wpe(torch.arange(T, device=inputs.device))
        extra = x.new_zeros((), dtype=torch.float32)
        for b in self.blocks:
            x, aux = b(x)
            extra = extra + aux.float()
        logits = self.lnf(x) @ self.wte.weight.t()
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return ce + extra


def flops_per_token(m, T):
    """PaLM: 6 N_active + 12 L T d."""
    d, L, V, Fd = int(m["d_model"]), int(m["n_layers"]), int(m["vocab_size"]), int(m["d_ff"])
    moe = m.get("moe", {}) or {}
    every, E, k = int(moe.get("every", 0)), int(moe.get("experts", 0)), int(moe.get("top_k", 1))
    attn = 3 * d * d + 3 * d + d * d + d + 4 * d  # qkv, proj, two LayerNorms
    ffn = 2 * d * Fd + Fd + d
    n = V * d + 2 * d  # tied head, final LayerNorm
    for l in range(L):
        n += attn
        if every > 0 and l % every == every - 1:
            n += k * ffn + d * E
        else:
            n += ffn
    return 6 * n + 12 * L * T * d, n


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench_train(cfg, args, dev):
    m, tr, op = cfg["model"], cfg.get("train", {}), cfg.get("optim", {})
    B = args.micro_batch or int(tr.get("micro_batch", 8))
    T = args.seq_len or int(tr.get("seq_len", 128))
    accum = max(1, int(tr.get("global_batch", B)) // int(tr.get("micro_batch", B)))
    torch.manual_seed(args.seed)
    model = Model(m).to(dev)
    kw = {"fused": True} if dev.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=float(op.get("lr", 1e-3)),
                            betas=(float(op.get("beta1", 0.9)), float(op.get("beta2", 0.95))),
                            eps=float(op.get("eps", 1e-8)), weight_decay=float(op.get("weight_decay", 0.1)),
                            **kw)
    clip = float(op.get("grad_clip", 1.0))
    step_fn = model
    if args.mode == "compile":
        if not hasattr(torch, "compile"):
            raise SystemExit(f"bench_torch_gpu: torch {torch.__version__} has no torch.compile")
        step_fn = torch.compile(model)
    use_bf16 = args.dtype == "bf16"
    if use_bf16:
        for mod in model.modules():
            if isinstance(mod, MoE):
                mod.dispatch_dtype = torch.bfloat16
    V = int(m["vocab_size"])
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    batches = [torch.randint(0, V, (B, T + 1), generator=gen).to(dev) for _ in range(4)]

    def one_step(i):
        total = 0.0
        for a in range(accum):
            tok = batches[(i * accum + a) % len(batches)]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = step_fn(tok[:, :-1], tok[:, 1:]) / accum
            loss.backward()
            total += loss.detach()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    losses = []
    for i in range(args.warmup):
        losses.append(float(one_step(i)))
    sync(dev)
    t0 = time.perf_counter()
    for i in range(args.steps):
        l = one_step(args.warmup + i)
    sync(dev)
    dt = time.perf_counter() - t0
    losses.append(float(l))
    tokens = args.steps * accum * B * T
    fpt, n_active = flops_per_token(m, T)
    tps = tokens / dt
    out = {"what": f"torch {args.mode} {args.dtype}", "device": str(dev), "tokens_per_s": tps,
           "step_ms": 1e3 * dt / args.steps, "flops_per_token": fpt, "active_params": n_active,
           "model_tflops": fpt * tps / 1e12, "loss_first": losses[0], "loss_last": losses[-1],
           "micro_batch": B, "seq_len": T, "accum": accum}
    if args.peak_tflops:
        out["mfu"] = out["model_tflops"] / args.peak_tflops
    return out


def gemm_peak(dev, n):
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(dev)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        sync(dev)
        times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]
    return {"what": "bf16 GEMM peak", "device": str(dev), "n": n, "tflops": 2 * n ** 3 / t / 1e12}


def self_test():
    """The batched dispatch computes what a per-token loop over slots computes
    (slot-major capacity, drops, normalised gates); fails loudly otherwise."""
    torch.manual_seed(0)
    for cf, k in ((1.0, 2), (0.5, 2), (0.0, 1), (1.25, 3)):
        moe = MoE(8, 16, {"experts": 4, "top_k": k, "capacity_factor": cf, "min_capacity": 1})
        x = torch.randn(2, 9, 8)
        y, _ = moe(x)
        xs = x.reshape(-1, 8)
        N = xs.shape[0]
        probs = moe.router(xs).float().softmax(-1)
        gate, idx = probs.topk(k, -1)
        if moe.normalize:
            gate = gate / gate.sum(-1, keepdim=True)
        C = moe.capacity(N)
        count = [0] * 4
        want = torch.zeros(N, 8)
        dropped = 0
        for s in range(k):
            for n in range(N):
                e = int(idx[n, s])
                if count[e] >= C:
                    dropped += 1
                    continue
                count[e] += 1
                h = F.gelu(xs[n] @ moe.w1[e] + moe.b1[e], approximate="tanh")
                want[n] += gate[n, s] * (h @ moe.w2[e] + moe.b2[e])
        err = (y.reshape(N, 8) - want).abs().max().item()
        print(f"self-test: capacity_factor {cf}, top-{k}: C {C}, dropped {dropped}, max err {err:.2e}")
        if not err < 1e-5:
            raise SystemExit(f"self-test FAILED: batched MoE differs from the loop by {err}")
        if cf == 0.5 and dropped == 0:
            raise SystemExit("self-test FAILED: capacity 0.5 dropped nothing")
    print("self-test: ok")


def load_config(path, overrides):
    """A resolved config.json, or an m6train YAML file (needs PyYAML: the
    fallback when no m6train run wrote one); then --set KEY=VALUE overrides
    (dotted keys, values as YAML/JSON scalars)."""
    if path.endswith((".yaml", ".yml")):
        import yaml
        cfg = yaml.safe_load(open(path))
    else:
        cfg = json.load(open(path))
    for kv in overrides:
        key, _, text = kv.partition("=")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="resolved m6train config (<run>/config.json), or its YAML")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, as m6train's --set (repeatable)")
    ap.add_argument("--tiny", action="store_true", help="a small built-in shape (CI)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--micro-batch", type=int, default=0)
    ap.add_argument("--seq-len", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    ap.add_argument("--gemm-peak", action="store_true")
    ap.add_argument("--gemm-n", type=int, default=0)
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--flops", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.self_test:
        self_test()
        return 0
    if args.flops:
        cfg = TINY if args.tiny else load_config(args.config, args.set)
        T = args.seq_len or int(cfg.get("train", {}).get("seq_len", 128))
        fpt, n = flops_per_token(cfg["model"], T)
        print(json.dumps({"flops_per_token": fpt, "active_params": n, "seq_len": T}))
        return 0
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("bench_torch_gpu: no CUDA device visible to PyTorch", file=sys.stderr)
        return 77
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.gemm_peak:
        out = gemm_peak(dev, args.gemm_n or (8192 if dev.type == "cuda" else 256))
        print(f"{out['what']} on {out['device']}: {out['tflops']:.1f} TFLOP/s (n {out['n']})")
    else:
        if args.tiny:
            cfg = TINY
        elif args.config:
            cfg = load_config(args.config, args.set)
        else:
            ap.error("--config or --tiny is required")
        out = bench_train(cfg, args, dev)
        mfu = f", MFU {100 * out['mfu']:.1f}%" if "mfu" in out else ""
        print(f"{out['what']} on {out['device']}: {out['tokens_per_s']:.0f} tokens/s, "
              f"{out['step_ms']:.1f} ms/step, {out['model_tflops']:.2f} model TFLOP/s{mfu}; "
              f"loss {out['loss_first']:.3f} -> {out['loss_last']:.3f}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
