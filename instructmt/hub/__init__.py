"""Publish a training run to the Hugging Face Hub: stage the exact folder, then upload it in ONE commit.

Why one commit: the Hub applies a commit whole or not at all, so a failed upload never leaves a
half-published adapter behind. Why a staged folder: `--dry-run` writes that same folder, so what
you inspect is byte for byte what would be uploaded.

What goes up (see docs/publishing.md): the adapter in PEFT format (safetensors only — pickles are
refused or skipped), the tokenizer when it differs from the base model's, the training config, the
task list and split, the evaluation results and plots, and a model card whose `base_model` is a
Hub id (never a local path). Methods add their own files and card section through
their `hub_extras(run)` (in their own folder), chosen by the `method` in `instructmt_run.json`.

Modules: `run` (reading a run directory), `files` (what may go up), `stage` (the folder),
`upload` (one commit), `card` (the model card).

The token comes from the usual places (HF_TOKEN, the login cache) and is never written anywhere;
the endpoint is whatever huggingface_hub resolves (HF_ENDPOINT is honoured).
"""

from __future__ import annotations

from ..errors import PublishError
from .run import RunInfo, read_run, resolve_base_model_id
from .stage import StagedUpload, method_extras, stage
from .upload import PublishResult, publish

__all__ = ["PublishError", "PublishResult", "RunInfo", "StagedUpload", "method_extras", "publish", "read_run",
           "resolve_base_model_id", "stage"]
