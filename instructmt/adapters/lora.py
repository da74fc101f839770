"""Plain LoRA (peft) and full fine-tuning."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from .base import AdapterConfig, AdapterMethod


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


class FullFineTuning(AdapterMethod):
    name = "full"

    def apply(self, model, cfg, task_names):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def load(self, base_model, adapter_dir):
        # Full fine-tuning saves a whole model: load it in place of the base.
        return type(base_model).from_pretrained(str(adapter_dir))
