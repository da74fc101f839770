"""ScaLearn on the Hub: the frozen source adapters ship beside ω, and the config is rewritten to point there."""

from __future__ import annotations

from pathlib import Path

from ...errors import PublishError
from ..publishing import INSTRUCTMT_SNIPPET, SAFE_SUFFIXES, MethodExtras, json_if, markdown_table


def omega_summary(path: Path, sources: list[str]) -> str:
    """Mean ω per source adapter over all scaled modules (best effort: numpy cannot hold bf16)."""
    try:
        from safetensors.numpy import load_file
        tensors = load_file(str(path))
    except Exception:  # noqa: BLE001 - the summary is a nicety; the card stands without it
        return ""
    n, sums, count = len(sources), None, 0
    for t in tensors.values():
        if n == 0 or not t.shape or t.shape[0] != n:
            continue
        per_source = t.astype("float64").reshape(n, -1).mean(axis=1)
        sums = per_source if sums is None else sums + per_source
        count += 1
    if not count:
        return ""
    rows = [(f"`{s}`", f"{v / count:.4f}") for s, v in zip(sources, sums)]
    return f"\n\nMean learned ω per source ({count} ω tensors):\n\n" + markdown_table(rows, ("source adapter", "mean ω"))


def scalearn_hub_extras(run) -> MethodExtras:
    """scalearn_config.json (sources, source_names, sources_relative, variant) + scalearn_omega.safetensors.
    The frozen source adapters are shipped under source_adapters/<name>/ and the config is rewritten
    to point there, so the published ω loads without this machine's paths."""
    cfg_path = run.model_dir / "scalearn_config.json"
    cfg = json_if(cfg_path)
    if not cfg:
        raise PublishError(f"{run.model_dir}: method scalearn but no scalearn_config.json")
    sources = [str(s) for s in cfg.get("sources") or []]
    names = list(cfg.get("source_names") or [Path(s).name for s in sources])
    relative = list(cfg.get("sources_relative") or [None] * len(sources))
    files: list[tuple[Path, str]] = []
    rows = []
    for name, absolute, rel in zip(names, sources, relative):
        cands = ([(run.model_dir / rel).resolve()] if rel else []) + [Path(absolute)]
        cands += [c / "model" for c in list(cands)]
        found = next((c for c in cands if (c / "adapter_config.json").is_file()), None)
        if found is None:
            raise PublishError(f"ScaLearn source adapter {name!r} not found at {', '.join(map(str, cands[:2]))}; "
                               "the published ω would combine adapters nobody can load")
        dest = f"source_adapters/{name}"
        for src in sorted(found.iterdir()):
            if src.is_file() and src.suffix in SAFE_SUFFIXES and src.name != "README.md":
                files.append((src, f"{dest}/{src.name}"))
        if not any(r == f"{dest}/adapter_model.safetensors" for _, r in files):
            raise PublishError(f"ScaLearn source adapter {name!r} at {found} has no adapter_model.safetensors")
        rows.append((f"`{name}`", f"`{dest}/`"))
    rewritten = dict(cfg, sources=[f"source_adapters/{n}" for n in names],
                     sources_relative=[f"source_adapters/{n}" for n in names])
    section = ("ScaLearn: the base and the source adapters (one LoRA per source task) are frozen; only the "
               "scaling ω that combines the sources' outputs was trained (`o = Σ_i ω_i ⊙ a_i + h`)."
               + (f" Variant: **{cfg['variant']}**." if cfg.get("variant") else "")
               + " The source adapters are included in this repo.\n\n" + markdown_table(rows, ("source adapter", "folder")))
    omega = run.model_dir / "scalearn_omega.safetensors"
    if omega.is_file():
        section += omega_summary(omega, names)
    return MethodExtras(section=section, files=files, rewrites={"scalearn_config.json": rewritten},
                        tags=["scalearn", "multi-task", "lora"], library_name="instructmt",
                        snippet=INSTRUCTMT_SNIPPET, weights="adapter",
                        what="**ScaLearn** combination of source adapters")
