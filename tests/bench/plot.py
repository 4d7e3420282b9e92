#!/usr/bin/env python3
"""Draws the reaction-latency CDF of a benchmark run, the operator beside the floor (the watch event at a bare
watcher): plot.py results.json latency-cdf.png (needs matplotlib)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results, out = sys.argv[1], sys.argv[2]
with open(results) as f:
    r = json.load(f)
fig, ax = plt.subplots(figsize=(7, 4))
for key, label in [("reaction_samples_ms", "operator: signal -> Deregister at the CLB"),
                   ("floor_samples_ms", "floor: signal -> its watch event at a bare watcher")]:
    samples = sorted(r.get(key, []))
    n = len(samples)
    if n:
        ax.step(samples, [(i + 1) / n for i in range(n)], where="post", label=label)
ax.set_xlabel("reaction latency (ms)")
ax.set_ylabel("fraction of signals")
size = r["size"]
ax.set_title(f"clb-operator reaction latency ({size['nodes']} nodes, {size['pods']} pods, {size['bindings']} bindings)")
ax.grid(True, alpha=0.3)
ax.legend(loc="lower right")
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
