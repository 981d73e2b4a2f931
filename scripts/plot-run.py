#!/usr/bin/python3
"""Plots the metrics.jsonl of one or more m6train runs into one PNG.

usage: scripts/plot-run.py RUN_DIR... [-o OUT.png] [--title TEXT]

Four panels against the optimizer step: train loss (solid) and eval loss
(dashed, markers); learning rate; throughput (tokens/s); expert load balance
(max / mean tokens per expert, one line per MoE layer: 1.0 is perfect
balance). Several runs share the panels, one colour per run, labelled by
the run directory's name. The default output is RUN_DIR/loss.png of the
first run. A resumed run's repeated steps are drawn as logged.

Runs under Debian's /usr/bin/python3 with python3-matplotlib (setup.sh).
Exit codes: 0 written, 2 usage, 3 a run directory without a readable
metrics.jsonl.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def load(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    train, evals = [], []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    # A crash can leave a half-written last line; anything else is damage.
                    print(f"plot-run: {path}:{n}: skipped, not JSON ({e})", file=sys.stderr)
                    continue
                if r.get("kind") == "train":
                    train.append(r)
                elif r.get("kind") == "eval":
                    evals.append(r)
    except OSError as e:
        print(f"plot-run: {run_dir}: cannot read metrics.jsonl ({e.strerror}); "
              f"is this an m6train run directory?", file=sys.stderr)
        sys.exit(3)
    if not train and not evals:
        print(f"plot-run: {path}: no train or eval records yet", file=sys.stderr)
        sys.exit(3)
    return train, evals


def moe_layer_ids(run_dir, count):
    """Logical indices of the MoE layers (config.json), else 0..count-1."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            m = json.load(f)["model"]
        every = m["moe"]["every"]
        ids = [l for l in range(m["n_layers"]) if every > 0 and l % every == every - 1]
        if len(ids) == count:
            return ids
    except (OSError, KeyError, ValueError, TypeError):
        pass
    return list(range(count))


def series(records, key):
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if v is not None:
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("-o", "--out", help="output PNG (default: RUN_DIR/loss.png of the first run)")
    ap.add_argument("--title", help="figure title (default: the run names)")
    args = ap.parse_args()
    out = args.out or os.path.join(args.runs[0], "loss.png")

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    ax_loss, ax_lr, ax_tput, ax_load = axes.flat
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(args.runs):
        train, evals = load(run)
        c = colors[i % len(colors)]
        name = os.path.basename(os.path.normpath(run))
        ax_loss.plot(*series(train, "loss"), color=c, lw=1.2, label=f"{name} train")
        ax_loss.plot(*series(evals, "eval_loss"), color=c, lw=1.2, ls="--", marker="o", ms=3,
                     label=f"{name} eval")
        ax_lr.plot(*series(train, "lr"), color=c, label=name)
        ax_tput.plot(*series(train, "tokens_per_s"), color=c, label=name)
        layers = max((len(r.get("expert_load_max_over_mean") or []) for r in train), default=0)
        styles = ["-", "--", ":", "-."]
        ids = moe_layer_ids(run, layers)
        for layer in range(layers):
            xs, ys = [], []
            for r in train:
                v = (r.get("expert_load_max_over_mean") or [None] * layers)[layer]
                if v is not None:
                    xs.append(r["step"])
                    ys.append(v)
            ax_load.plot(xs, ys, color=c, ls=styles[layer % len(styles)],
                         label=f"{name} layer {ids[layer]}")
    ax_loss.set_title("loss (train solid, eval dashed)")
    ax_loss.set_ylabel("cross-entropy (nats)")
    ax_lr.set_title("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_tput.set_title("throughput")
    ax_tput.set_ylabel("tokens/s")
    ax_load.set_title("expert load: max / mean tokens per expert")
    ax_load.axhline(1.0, color="grey", lw=0.8)
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data (dense model)" if ax is ax_load else "no data",
                    ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle(args.title or ", ".join(os.path.basename(os.path.normpath(r)) for r in args.runs))
    try:
        fig.savefig(out, dpi=100)
    except OSError as e:
        print(f"plot-run: cannot write {out} ({e.strerror})", file=sys.stderr)
        sys.exit(3)
    print(f"plot-run: wrote {out}")


if __name__ == "__main__":
    main()
