"""The loss curve of a fine-tuning job as a PNG: loss per optimizer step above, throughput below.

Drawn from the job's `TrainingStepRow`s with matplotlib's Agg backend (no display needed).
This module knows nothing about storage.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from autosafe_core.store.records import TrainingStepRow


def loss_plot(rows: Sequence[TrainingStepRow], title: str) -> bytes:
    """PNG bytes of loss and tokens/s per device against the step."""
    from matplotlib.figure import Figure  # drawn on its own canvas: no display, no pyplot state
    from matplotlib.ticker import MaxNLocator

    steps = [r.step for r in rows]
    figure = Figure(figsize=(7, 5), dpi=100, layout="constrained")
    loss_ax, speed_ax = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    loss_ax.plot(steps, [r.loss for r in rows], marker="o" if len(rows) < 40 else None, color="tab:blue")
    loss_ax.set_ylabel("loss (target tokens)")
    loss_ax.set_title(title, fontsize=10)
    loss_ax.grid(alpha=0.3)
    loss_ax.ticklabel_format(axis="y", useOffset=False)
    speed_ax.plot(steps, [r.tokens_per_s_per_device for r in rows], color="tab:green")
    speed_ax.set_ylabel("tokens/s per device")
    speed_ax.set_xlabel("optimizer step")
    speed_ax.grid(alpha=0.3)
    speed_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
