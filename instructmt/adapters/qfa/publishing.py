"""A QFA-LoRA subnet on the Hub: its bit-width configuration and sizes, from qfa_subnet.json."""

from __future__ import annotations

from ...errors import PublishError
from ..publishing import INSTRUCTMT_SNIPPET, MethodExtras, json_if, markdown_table


def qfa_hub_extras(run) -> MethodExtras:
    """An exported QFA subnet (`instructmt qfa export`): packed weights + their LoRAs in
    model.safetensors, qfa_subnet.json (configuration, layer_bits, avg_bits, group_size, r, ...)."""
    meta = json_if(run.model_dir / "qfa_subnet.json")
    if not meta:
        raise PublishError(f"{run.model_dir}: no qfa_subnet.json — publish an exported subnet "
                           "(`instructmt qfa export --run RUN --config ... --output DIR`), not the supernet")
    bits = list((meta.get("configuration") or {}).values()) or list((meta.get("layer_bits") or {}).values())
    counts = {b: bits.count(b) for b in sorted(set(bits))}
    section = ("QFA-LoRA subnet: the base weights are quantized once per bit-width and each layer keeps the LoRA "
               "trained for its bit-width; this repo holds one chosen configuration — packed quantized weights "
               "with their LoRAs — ready to run.\n\n" + markdown_table([
                   ("average bits", f"{avg:.3f}" if isinstance(avg := meta.get("avg_bits"), (int, float)) else None),
                   ("layers per bit-width", ", ".join(f"{c}× {b}-bit" for b, c in counts.items())),
                   ("group size", meta.get("group_size")), ("LoRA rank", meta.get("r")),
                   ("quantized weight bytes", meta.get("weight_bytes")), ("LoRA bytes", meta.get("lora_bytes"))]))
    if isinstance(meta.get("configuration"), dict):
        section += "\n\n" + markdown_table([(f"`{u}`", b) for u, b in meta["configuration"].items()], ("unit", "bits"))
    public = {k: v for k, v in meta.items() if k != "source_run"}  # a path on the training machine
    return MethodExtras(section=section, rewrites={"qfa_subnet.json": public}, tags=["qfa", "quantization", "lora"],
                        library_name="instructmt", snippet=INSTRUCTMT_SNIPPET, weights="full",
                        what="**QFA-LoRA subnet** (quantized base + per-bit-width LoRAs)")
