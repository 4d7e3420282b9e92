#!/usr/bin/env python3
"""Draws the drain benchmark's timeline: drain_plot.py drain.json drain-timeline.png (needs matplotlib).

One panel per scenario: requests/s and errors/s over time, with the drain signals marked."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results, out = sys.argv[1], sys.argv[2]
with open(results) as f:
    r = json.load(f)
scenarios = r["scenarios"]
fig, axes = plt.subplots(len(scenarios), 1, figsize=(8, 2.2 * len(scenarios)), sharex=True)
for ax, sc in zip(axes, scenarios):
    t = [p[0] for p in sc["timeline"]]
    ax.plot(t, [p[1] for p in sc["timeline"]], label="requests/s", color="tab:blue")
    ax.plot(t, [p[2] for p in sc["timeline"]], label="errors/s", color="tab:red")
    for i, s in enumerate(sc["signals_ms_since_start"]):
        ax.axvline(s / 1000, color="grey", linestyle="--", linewidth=0.8, label="drain signal" if i == 0 else None)
    ax.set_title(f"{sc['scenario']}: {sc['failed']} of {sc['requests']} requests failed", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.set_ylabel("per second")
axes[0].legend(loc="upper right", fontsize=8)
axes[-1].set_xlabel("seconds since the load started")
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
