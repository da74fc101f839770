"""ScaLearn (Frohmann et al. 2024): transfer to a target task by learning to scale frozen source
LoRA adapters. Stage 1 trains one LoRA per source task (`workflows.scalearn_stage1.train_per_task`); stage 2 trains
only the scaling ω (`ScaLearnModel`, registered as the adapter method "scalearn")."""

from .config import VARIANTS, ScaLearnConfig, canonical_variant
from .layer import ScaLearnLinear
from .method import ScaLearnMethod, config_from_options
from .model import ScaLearnModel
from .sources import ScaLearnError, SourceAdapter, load_source

__all__ = ["VARIANTS", "ScaLearnConfig", "ScaLearnError", "ScaLearnLinear", "ScaLearnMethod", "ScaLearnModel",
           "SourceAdapter", "canonical_variant", "config_from_options", "load_source"]
