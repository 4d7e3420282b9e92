#!/usr/bin/env python3
"""Draws the reaction-latency CDF of a benchmark run: plot.py results.json latency-cdf.png (needs matplotlib)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results, out = sys.argv[1], sys.argv[2]
with open(results) as f:
    r = json.load(f)
samples = sorted(r["reaction_samples_ms"])
n = len(samples)
fig, ax = plt.subplots(figsize=(7, 4))
ax.step(samples, [(i + 1) / n for i in range(n)], where="post", label="signal -> Deregister at the CLB")
ax.axvline(50, color="grey", linestyle="--", label="goal: p99 <= 50 ms")
ax.set_xlabel("reaction latency (ms)")
ax.set_ylabel("fraction of signals")
size = r["size"]
ax.set_title(f"clb-operator reaction latency ({size['nodes']} nodes, {size['pods']} pods, {size['bindings']} bindings)")
ax.grid(True, alpha=0.3)
ax.legend(loc="lower right")
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
