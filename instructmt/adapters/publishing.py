"""What a method adds to its Hub repo: the `MethodExtras` record its `hub_extras(run)` returns, and
the small helpers those hooks share. It lives below `hub/` so each method folder writes its own hook
from files on disk (`run` is a `hub.run.RunInfo`: `run_dir`, `model_dir`, `eval_dir`, `meta`,
`adapter_config`, `task_names`, `method`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PublishError

# Files that may be published. Everything else in the model folder is skipped (and reported).
SAFE_SUFFIXES = {".json", ".safetensors", ".txt", ".md", ".yaml", ".yml", ".model", ".jinja", ".png", ".csv"}
# peft tuners that load without importing instructmt (anything else needs the method's module).
PEFT_BUILTIN_TYPES = {"LORA", "POLY", "ADALORA", "IA3", "LOHA", "LOKR", "OFT", "BOFT", "VERA",
                      "PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "LN_TUNING", "FOURIERFT", "HRA"}

INSTRUCTMT_SNIPPET = '''```python
from huggingface_hub import snapshot_download
from instructmt.models.loading import load_run  # pip install instructmt

model, tokenizer, meta = load_run(snapshot_download("{repo_id}"))
```'''


@dataclass
class MethodExtras:
    section: str = ""
    files: list[tuple[Path, str]] = field(default_factory=list)  # extra (source, path in repo)
    rewrites: dict[str, Any] = field(default_factory=dict)  # path in repo -> new JSON content
    tags: list[str] = field(default_factory=list)
    # Module to import before PeftModel.from_pretrained when the tuner isn't a builtin peft type.
    register_module: str | None = None
    library_name: str | None = None  # "transformers", "instructmt" (not loadable by peft alone)
    snippet: str | None = None  # replaces the card's loading snippet ({repo_id} is filled in)
    weights: str | None = None  # "adapter" (needs the base) | "full" (self-contained); default: by files
    task_names: list[str] | None = None  # router rows, when the method records them itself
    what: str | None = None  # how the card's first line names the artifact


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PublishError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise PublishError(f"{path} is not valid JSON: {e}") from None


def json_if(path: Path) -> dict:
    data = read_json(path) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def markdown_table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("setting", "value")) -> str:
    body = "\n".join(f"| {k} | {v} |" for k, v in rows if v not in (None, "", []))
    return f"| {head[0]} | {head[1]} |\n|---|---|\n{body}" if body else ""


def custom_tuner(run) -> str | None:
    """The module a card's snippet imports before peft can load the adapter (None for peft's own tuners)."""
    peft_type = str((run.adapter_config or {}).get("peft_type") or "").upper()
    if peft_type and peft_type not in PEFT_BUILTIN_TYPES:
        return f"instructmt.adapters.{run.method}"
    return None


def looks_like_path_value(value: Any) -> bool:
    return isinstance(value, str) and ("/" in value or "\\" in value) and Path(value).expanduser().exists()


def generic_extras(run) -> MethodExtras:
    """A method without its own hook: a one-line section; peft loads it when it has an adapter_config."""
    peft = run.adapter_config is not None
    return MethodExtras(section=f"Adapter method `{run.method}`.", register_module=custom_tuner(run),
                        library_name=None if peft else "instructmt",
                        snippet=None if peft else INSTRUCTMT_SNIPPET)
