#!/usr/bin/python3
"""Training throughput of the PyTorch reference model (tests/ref/m6_torch.py)
on an m6train resolved config (<run>/config.json): the peer that
scripts/bench-cpu.sh measures m6train against.

A timed step is what m6train's step is: accumulation micro-batches of
forward + backward (B = train.micro_batch, T = train.seq_len, accumulation =
global_batch / micro_batch on one process), gradient clipping when
optim.grad_clip > 0, and an AdamW update. Tokens are random (throughput does
not depend on them beyond routing, which starts near-uniform either way).

Prints a human line and, with --json, one JSON object on the last line.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
import m6_torch  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description="PyTorch peer throughput for an m6train config")
    ap.add_argument("--config", required=True, help="resolved config JSON (<run>/config.json)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: train.threads of the config, 0 = all cores)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    args = ap.parse_args(argv)

    with open(args.config) as f:
        cfg = json.load(f)
    spec = m6_torch.spec_from_config(cfg)
    train = cfg.get("train", {})
    optim = cfg.get("optim", {})
    B = int(train.get("micro_batch", 8))
    T = int(train.get("seq_len", 128))
    accum = max(1, int(train.get("global_batch", B)) // B)
    threads = args.threads if args.threads is not None else int(train.get("threads", 0))
    if threads <= 0:
        threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already fixed by an earlier parallel call; only intra-op threads matter here

    params = m6_torch.init_params(spec, seed=args.seed, dtype=torch.float32)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(list(params.values()), lr=float(optim.get("lr", 1e-3)),
                            betas=(float(optim.get("beta1", 0.9)), float(optim.get("beta2", 0.95))),
                            eps=float(optim.get("eps", 1e-8)), weight_decay=float(optim.get("weight_decay", 0.1)))
    grad_clip = float(optim.get("grad_clip", 1.0))
    gen = torch.Generator().manual_seed(args.seed)

    def step():
        loss_sum = 0.0
        for _ in range(accum):
            tokens = torch.randint(0, spec.vocab_size, (B, T + 1), generator=gen)
            out = m6_torch.forward(spec, params, tokens[:, :T], tokens[:, 1:])
            (out.loss / accum).backward()
            loss_sum += out.loss.item() / accum
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_sum

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    elapsed = time.perf_counter() - t0
    tokens = args.steps * accum * B * T
    tps = tokens / elapsed
    n_params = sum(p.numel() for p in params.values())
    print(f"pytorch {torch.__version__}: {tps:.1f} tokens/s ({args.steps} steps of {accum}x{B}x{T} tokens in "
          f"{elapsed:.2f} s, {threads} threads, {n_params / 1e6:.2f}M params, last loss {loss:.4f})")
    if args.json:
        print(json.dumps({"tokens_per_s": tps, "threads": threads, "B": B, "T": T, "accum": accum,
                          "steps": args.steps, "seconds": elapsed, "params": n_params}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
