#!/usr/bin/env python3
"""Pseudo-to-Real against the real model from scratch, at equal wall-clock time.

Reads the metrics.jsonl of pairs of runs (one Pseudo-to-Real run, one run of
the real model from scratch, trained side by side on the same machine) and
writes a Markdown table of the eval loss at equal elapsed time plus a PNG of
the eval-loss curves (against time and against step).

usage: plot_p2r.py --pair P2R_RUN REAL_RUN [--pair ...] --md OUT.md --png OUT.png
                   [--note TEXT]

The eval loss at time t is interpolated linearly between the two eval records
around t (elapsed_s of an eval record includes the evaluations and, for the
Pseudo-to-Real run, the delink). Times are fractions of the budget: the
shorter of the two runs' total times, so both curves exist at every row.
"""
import argparse
import json
import os
import statistics


def load(run):
    evals, delink = [], None
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "eval":
                evals.append((r["elapsed_s"], r["step"], r["eval_loss"]))
            elif r["kind"] == "delink":
                delink = r
    with open(os.path.join(run, "config.json")) as f:
        cfg = json.load(f)
    return {"run": run, "evals": evals, "delink": delink, "config": cfg}


def at_time(evals, t):
    """(eval loss, step) interpolated at elapsed time t."""
    for (t0, s0, l0), (t1, s1, l1) in zip(evals, evals[1:]):
        if t0 <= t <= t1:
            w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return l0 + w * (l1 - l0), s0 + w * (s1 - s0)
    t_last, s_last, l_last = evals[-1]
    if t >= t_last:
        return l_last, s_last
    return evals[0][2], evals[0][1]


def delink_time(p):
    """Elapsed time of the eval record at the delink step (just before it)."""
    if not p["delink"]:
        return None
    for t, s, _ in p["evals"]:
        if s == p["delink"]["step"]:
            return t
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("P2R", "REAL"))
    ap.add_argument("--md", required=True)
    ap.add_argument("--png", required=True)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    pairs = [(load(p), load(r)) for p, r in args.pair]
    fractions = [0.1, 0.25, 0.5, 0.75, 1.0]

    p0 = pairs[0][0]
    sharing = p0["config"]["model"]["sharing"]
    m = p0["config"]["model"]
    lines = []
    lines.append("# Pseudo-to-Real vs. the real model from scratch, equal wall-clock time\n")
    lines.append(
        f"Model: {m['n_layers']} layers, d_model {m['d_model']}, d_ff {m['d_ff']}, "
        f"every layer MoE ({m['moe']['experts']} experts, router {m['moe']['router']}"
        f"{', ' + str(m['moe']['prototypes']) + ' prototypes' if m['moe']['router'] == 'prototypes' else ''}). "
        f"Pseudo-to-Real: {m['n_layers']} layers share {sharing['groups']} parameter set(s) until "
        f"step {sharing['delink_at_step']}, then delinked (Adam moments "
        f"{sharing['delink_optimizer']}); same data, schedule and steps as the real run.\n")
    if args.note:
        lines.append(args.note + "\n")
    lines.append("Eval loss (nats/byte, held-out fortunes) at equal elapsed time; budget = the "
                 "shorter run's total time; linear interpolation between evaluations.\n")
    lines.append("| pair (seed) | time | P2R eval loss | real eval loss | P2R - real | P2R step | real step |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    diffs = {f: [] for f in fractions}
    for p, r in pairs:
        budget = min(p["evals"][-1][0], r["evals"][-1][0])
        seed = p["config"]["train"]["seed"]
        for f in fractions:
            t = f * budget
            lp, sp = at_time(p["evals"], t)
            lr, sr = at_time(r["evals"], t)
            diffs[f].append(lp - lr)
            lines.append(f"| {seed} | {t:.0f} s ({f:.0%}) | {lp:.4f} | {lr:.4f} | {lp - lr:+.4f} | "
                         f"{sp:.0f} | {sr:.0f} |")
    if len(pairs) > 1:
        lines.append("\nMean of P2R - real over the pairs: " +
                     ", ".join(f"{f:.0%}: {statistics.mean(diffs[f]):+.4f}" for f in fractions) + ".\n")
    lines.append("\n| pair (seed) | P2R: steps, total s, delink at | real: steps, total s | "
                 "delink loss before = after |")
    lines.append("|---|---|---|---|")
    for p, r in pairs:
        d = p["delink"] or {}
        lines.append(
            f"| {p['config']['train']['seed']} | {p['evals'][-1][1]}, {p['evals'][-1][0]:.1f} s, "
            f"{delink_time(p) or 0:.1f} s | {r['evals'][-1][1]}, {r['evals'][-1][0]:.1f} s | "
            f"{d.get('loss_before_hex', '?')} = {d.get('loss_after_hex', '?')} "
            f"({'identical' if d.get('identical') else 'DIFFERENT'}) |")
    lines.append(f"\nPlot: {os.path.basename(args.png)}. Runs: " +
                 ", ".join(f"{p['run']} / {r['run']}" for p, r in pairs) + "\n")
    with open(args.md, "w") as f:
        f.write("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = ["tab:red", "tab:blue"]
    for i, (p, r) in enumerate(pairs):
        alpha = 1.0 if i == 0 else 0.45
        seed = p["config"]["train"]["seed"]
        for run, c, label in [(p, colors[0], "Pseudo-to-Real"), (r, colors[1], "real from scratch")]:
            t = [e[0] for e in run["evals"]]
            s = [e[1] for e in run["evals"]]
            lo = [e[2] for e in run["evals"]]
            ax_t.plot(t, lo, color=c, alpha=alpha, label=f"{label} (seed {seed})")
            ax_s.plot(s, lo, color=c, alpha=alpha, label=f"{label} (seed {seed})")
        dt = delink_time(p)
        if dt is not None:
            ax_t.axvline(dt, color="gray", ls=":", alpha=alpha)
            ax_s.axvline(p["delink"]["step"], color="gray", ls=":", alpha=alpha)
    for ax, xl in [(ax_t, "elapsed wall-clock time (s)"), (ax_s, "optimizer step")]:
        ax.set_xlabel(xl)
        ax.set_ylabel("eval loss (nats/byte)")
        ax.grid(alpha=0.3)
        ax.set_ylim(top=min(4.5, ax.get_ylim()[1]))
    ax_t.set_title("eval loss vs. time (dotted: delink)")
    ax_s.set_title("eval loss vs. step")
    ax_s.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.md} and {args.png}")


if __name__ == "__main__":
    main()
