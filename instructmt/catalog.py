"""The built-ins, one line each: adapter methods, task formats and metrics as lazy `"module:object"`
(or `"module"`) entries. A name here is known without importing anything; its module loads on first
use. Adding a method, a format or a metric: write it in its own module or folder, add one line here.

The registries live here, below every layer that fills them, so a lower layer can check a name
(a task YAML's `metrics:`) without importing the layer that implements it.
"""

from __future__ import annotations

from typing import Any

from .registry import Registry

BUILTIN_ADAPTERS = {
    "lora": "instructmt.adapters.lora:LoRAMethod",
    "full": "instructmt.adapters.lora:FullFineTuning",
    "mhr-mu": "instructmt.adapters.mhr.adapt:MHRMuMethod",
    "lora-continue": "instructmt.adapters.mhr.adapt:LoRAContinueMethod",
    "mhr": "instructmt.adapters.mhr:MHRMethod",
    "poly": "instructmt.adapters.mhr:PolyMethod",
    "scalearn": "instructmt.adapters.scalearn.method:ScaLearnMethod",
    "qfa": "instructmt.adapters.qfa:QFAMethod",
    "qfa_subnet": "instructmt.adapters.qfa:QFASubnetMethod",
}

# Detection tries the formats in this order; the first whose `detect(path)` is true loads the file.
BUILTIN_FORMATS = {
    "niv1_json": "instructmt.tasks.natural_instructions:NIV1_FORMAT",  # before sni_json: NI v1 files match both
    "sni_json": "instructmt.tasks.natural_instructions:SNI_FORMAT",
    "instructions_jsonl": "instructmt.tasks.natural_instructions:JSONL_FORMAT",
    **{f"decanlp_{source}": f"instructmt.tasks.decanlp.{source}:FORMAT" for source in (
        "squad", "woz", "nli", "wikisql", "sst", "cnn_dailymail", "iwslt", "qasrl", "qazre", "mwsc")},
    "task_yaml": "instructmt.tasks.yaml_spec.formats:TASK_YAML_FORMAT",
    "mixture_yaml": "instructmt.tasks.yaml_spec.formats:MIXTURE_YAML_FORMAT",
    "box_instructions": "instructmt.tasks.box:FORMAT",
    "chebi20_tsv": "instructmt.tasks.molecular:CHEBI20_FORMAT",
    "uspto_csv": "instructmt.tasks.molecular:USPTO_FORMAT",
    "actions_jsonl": "instructmt.tasks.molecular:ACTIONS_FORMAT",
}

BUILTIN_METRICS = {
    **dict.fromkeys(("exact_match", "rougeL"), "instructmt.evaluation.metrics"),
    **dict.fromkeys(("nf1", "nem", "em", "bleu", "avg_rouge", "lfem", "dsem", "corpus_f1"),
                    "instructmt.evaluation.decanlp_metrics"),
    **dict.fromkeys(("box_rougeL", "box_em", "box_f1", "box_sacrebleu"), "instructmt.evaluation.box_metrics"),
    **dict.fromkeys(("smiles_validity", "smiles_exact", "morgan_fts", "maccs_fts", "rdk_fts", "levenshtein",
                     "smiles_bleu", "text_bleu2", "text_bleu4", "text_rouge1", "text_rouge2", "text_rougeL",
                     "chem_em"), "instructmt.evaluation.chem_metrics"),
}


def _instance(cls: type) -> Any:
    return cls()


ADAPTERS: Registry[Any] = Registry("adapter method", BUILTIN_ADAPTERS, make=_instance)
FORMATS: Registry[Any] = Registry("task format", BUILTIN_FORMATS)
METRICS: Registry[Any] = Registry("metric", BUILTIN_METRICS)
