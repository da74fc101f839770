"""Plain LoRA (peft) and full fine-tuning."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from .base import AdapterConfig, AdapterMethod
from .publishing import MethodExtras, custom_tuner, markdown_table


def peft_task_type(model: nn.Module) -> TaskType:
    return TaskType.SEQ_2_SEQ_LM if getattr(model.config, "is_encoder_decoder", False) else TaskType.CAUSAL_LM


class LoRAMethod(AdapterMethod):
    name = "lora"

    def apply(self, model, cfg: AdapterConfig, task_names):
        config = LoraConfig(task_type=peft_task_type(model), r=cfg.r, lora_alpha=cfg.alpha,
                            lora_dropout=cfg.dropout, target_modules=cfg.target_modules)
        return get_peft_model(model, config)

    def load(self, base_model, adapter_dir):
        return PeftModel.from_pretrained(base_model, str(adapter_dir))

    def hub_extras(self, run) -> MethodExtras:
        ac = run.adapter_config or {}
        table = markdown_table([("rank r", ac.get("r")), ("alpha", ac.get("lora_alpha")),
                                ("dropout", ac.get("lora_dropout")),
                                ("target modules", ", ".join(sorted(ac.get("target_modules") or [])))])
        return MethodExtras(section="LoRA (low-rank adapters on the frozen base, peft format).\n\n" + table,
                            tags=["lora"], register_module=custom_tuner(run))


class FullFineTuning(AdapterMethod):
    name = "full"
    whole_model = True

    def apply(self, model, cfg, task_names):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def load(self, base_model, adapter_dir):
        # Full fine-tuning saves a whole model: load it in place of the base.
        return type(base_model).from_pretrained(str(adapter_dir))

    def hub_extras(self, run) -> MethodExtras:
        return MethodExtras(section="Full fine-tuning: every weight of the base model was trained; the repo "
                                    "holds the whole model (safetensors).", library_name="transformers",
                            weights="full")
