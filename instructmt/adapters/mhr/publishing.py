"""MHR / Poly on the Hub: the router's task-id table, its settings and routing plots (from files on disk)."""

from __future__ import annotations

from pathlib import Path

from ...errors import PublishError
from ..publishing import MethodExtras, custom_tuner, json_if, markdown_table


def mhr_hub_extras(run) -> MethodExtras:
    """peft Poly checkpoint + mhr_config.json (task_names = router rows, gumbel, router_lr)."""
    ac = run.adapter_config or {}
    sidecar = json_if(run.model_dir / "mhr_config.json")
    names = list(sidecar.get("task_names") or run.task_names)
    n_tasks = ac.get("n_tasks", sidecar.get("n_tasks"))
    if n_tasks is not None and int(n_tasks) != len(names):
        raise PublishError(f"{run.model_dir}: the router has {n_tasks} task rows but the run lists "
                           f"{len(names)} task names; the task-id table would be wrong")
    settings = [(k, ac.get(k, sidecar.get(k))) for k in ("n_skills", "n_splits", "r", "poly_type")]
    settings += [(k, sidecar.get(k)) for k in ("gumbel", "router_lr", "dropout")]
    section = ("Multi-head adapter routing (MHR): a shared inventory of LoRA skills mixed per task by a learned "
               "router. Every forward and `generate` call takes `task_ids` (a LongTensor, one id per example) "
               "from the table below (also in `tasks.json`); all tasks' routing rows are in this one adapter. "
               "Stock peft loads it (`peft_type: POLY`); `instructmt.adapters.mhr` loads it with the faster "
               "tuner and adds new tasks.\n\n" + markdown_table(settings) + "\n\n**Task ids** (router rows):\n\n"
               + markdown_table([(i, f"`{n}`") for i, n in enumerate(names)], ("task id", "task")))
    files = []
    for folder in dict.fromkeys(d for d in (run.eval_dir, run.run_dir / "routing", run.run_dir) if d):
        for name in ("routing.json", "routing_heatmap.png", "task_similarity.png"):
            if (folder / name).is_file() and folder != run.eval_dir and not any(r.endswith(name) for _, r in files):
                files.append((folder / name, f"routing/{name}"))
    pngs = [r for _, r in files if r.endswith(".png")]
    if run.eval_dir:
        pngs += [f"eval/{p.name}" for p in sorted(run.eval_dir.glob("*.png")) if "rout" in p.name or "simil" in p.name]
    for png in pngs:
        section += f"\n\n![{Path(png).stem}]({png})"
    return MethodExtras(section=section, files=files, tags=["mhr", "multi-task", "routing"],
                        register_module=custom_tuner(run), task_names=names)
