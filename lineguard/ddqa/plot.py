"""The DDQA table as a bar chart next to its JSON: accuracy per task and system, chance as a tick."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lineguard.ddqa.rules import TASKS


def plot(rep: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in rep["table"] if s != "random chance"]
    chance = rep["table"]["random chance"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        vals = [rep["table"][s].get(t) or 0.0 for t in TASKS]
        ax.bar([k + i * width for k in range(len(TASKS))], vals, width, label=s)
    for k, t in enumerate(TASKS):
        if chance.get(t) is not None:
            ax.hlines(chance[t], k - width / 2, k + 0.8 - width / 2, colors="k", linestyles="dashed",
                      label="random chance" if k == 0 else None)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(TASKS))], ["AD", "RDL", "DFM (IoU≥0.5)", "DC"])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(f"DDQA on {rep['images']} images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
