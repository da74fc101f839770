"""Pictures of what the router learned: routing weights (tasks x skills) and the task similarity they imply."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ...io_safety import atomic_write_text
from .model import routing_weights, task_similarity


def write_routing_report(model: nn.Module, task_names: list[str] | None, out_dir: str | Path) -> dict:
    """Write routing.json, routing_heatmap.png and task_similarity.png; return the JSON payload.

    Heatmap: eval routing α (sigmoid, normalised over skills), averaged over layers and heads -> (T, K).
    Similarity: cosine between tasks of their full flattened routing (all layers, heads, skills).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layer_names, weights = routing_weights(model)  # (L, T, h, K)
    n_tasks = weights.shape[1]
    names = list(task_names) if task_names else [f"task_{i}" for i in range(n_tasks)]
    if len(names) != n_tasks:
        names = names[:n_tasks] + [f"task_{i}" for i in range(len(names), n_tasks)]
    mean_routing = weights.mean(dim=(0, 2))  # (T, K)
    similarity = task_similarity(weights)

    payload = {
        "task_names": names,
        "n_layers": len(layer_names),
        "n_heads": int(weights.shape[2]),
        "n_skills": int(weights.shape[3]),
        "routing_mean": [[round(float(v), 6) for v in row] for row in mean_routing],
        "task_similarity": [[round(float(v), 6) for v in row] for row in similarity],
        "layers": layer_names,
    }
    atomic_write_text(out / "routing.json", json.dumps(payload, indent=2) + "\n")

    size = (1.2 + 0.5 * mean_routing.shape[1], 1.2 + 0.35 * n_tasks)
    fig, ax = plt.subplots(figsize=(max(size[0], 4), max(size[1], 3)))
    im = ax.imshow(mean_routing.numpy(), aspect="auto", cmap="viridis")
    ax.set_xlabel("skill")
    ax.set_ylabel("task")
    ax.set_xticks(range(mean_routing.shape[1]))
    ax.set_yticks(range(n_tasks), labels=names, fontsize=7)
    _save(plt, fig, ax, im, "MHR routing weights (mean over layers and heads)", out / "routing_heatmap.png")

    side = max(4, 1.5 + 0.35 * n_tasks)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(similarity.numpy(), cmap="magma", vmin=float(similarity.min()), vmax=1.0)
    ax.set_xticks(range(n_tasks), labels=names, rotation=90, fontsize=7)
    ax.set_yticks(range(n_tasks), labels=names, fontsize=7)
    _save(plt, fig, ax, im, "task similarity (cosine of routing)", out / "task_similarity.png")
    return payload


def _save(plt, fig, ax, im, title: str, path: Path) -> None:
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
