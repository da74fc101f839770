"""The model card for a published run: Hub metadata (base_model as a Hub id, library, tags, datasets,
model-index per task family) and a body that says what was trained, how to load it, and how it did
on held-out tasks. Built with huggingface_hub's ModelCard / ModelCardData / EvalResult so that the
Hub parses it the same way we write it."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .. import __version__
from ..adapters.publishing import MethodExtras
from ..catalog import ADAPTERS
from ..retrieval.publishing import RETRIEVER_METHOD
from .run import RunInfo

FIRST_METRICS = ("exact_match", "rougeL")


@dataclass
class CardInputs:
    run: RunInfo
    repo_id: str
    base_model: str | None
    extras: MethodExtras
    weights: str  # "adapter" | "full"
    tokenizer_included: bool
    datasets: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    base_in_repo: str | None = None  # subfolder holding the base weights (random-init presets)


@dataclass
class TaskScore:
    task: str
    family: str
    held_out: bool
    scores: dict[str, float]


def _numbers(metrics: dict, suffix: str) -> dict[str, float]:
    """{metric: value} for the flat keys `{metric}{suffix}` (the SNI-style metrics.json)."""
    out = {}
    for key, value in metrics.items():
        if key.endswith(suffix) and isinstance(value, (int, float)) and not isinstance(value, bool):
            metric = key[: -len(suffix)]
            if metric and "_for_" not in metric:
                out[metric] = float(value)
    return out


def task_scores(run: RunInfo) -> list[TaskScore]:
    """Per-task scores from eval/metrics.json (`{metric}_for_{task}` keys, as evaluate_tasks writes)."""
    metrics = run.metrics or {}
    families = run.task_families()
    held_out = set(run.held_out)
    candidates = list(dict.fromkeys(list(families) + run.held_out + run.seen))
    out = []
    for task in candidates:
        scores = _numbers(metrics, f"_for_{task}")
        if scores:
            out.append(TaskScore(task, families.get(task, "tasks"), task in held_out, scores))
    return sorted(out, key=lambda s: (not s.held_out, s.family, s.task))


def family_scores(run: RunInfo, scores: list[TaskScore]) -> dict[str, dict[str, float]]:
    """family -> metric -> score: the evaluator's own per-family aggregate (over instances) when it
    wrote one, else the mean over that family's tasks."""
    metrics = run.metrics or {}
    out: dict[str, dict[str, float]] = {}
    for family in dict.fromkeys(s.family for s in scores):
        written = _numbers(metrics, f"_for_family_{family}")
        if written:
            out[family] = {m: round(v, 4) for m, v in written.items()}
            continue
        per_metric: dict[str, list[float]] = {}
        for s in scores:
            if s.family == family:
                for m, v in s.scores.items():
                    per_metric.setdefault(m, []).append(v)
        out[family] = {m: round(mean(v), 4) for m, v in per_metric.items()}
    return out


def _eval_results(inputs: CardInputs, scores: list[TaskScore]) -> list[EvalResult]:
    task_type = "text-generation" if inputs.run.kind == "causal" else "text2text-generation"
    bound = dict(d.split("=", 1) for d in inputs.datasets if "=" in d)
    held = [s for s in scores if s.held_out] or scores
    counts: dict[str, int] = {}
    for s in held:
        counts[s.family] = counts.get(s.family, 0) + 1
    split = "held-out tasks" if any(s.held_out for s in held) else "evaluated tasks"
    results = []
    for family, metrics in sorted(family_scores(inputs.run, held).items()):
        for metric, value in sorted(metrics.items()):
            results.append(EvalResult(
                task_type=task_type, task_name=f"{split} ({family})",
                dataset_type=bound.get(family, family), dataset_name=f"{family} {split} ({counts[family]})",
                dataset_split=split.replace(" ", "-"), metric_type=metric, metric_name=metric, metric_value=value))
    return results


def _families(inputs: CardInputs) -> list[str]:
    fams = inputs.run.task_families()
    names = inputs.run.seen + inputs.run.held_out
    return sorted({fams[n] for n in names if n in fams})


def _snippet(inputs: CardInputs) -> str:
    run, extras = inputs.run, inputs.extras
    if extras.snippet:
        return extras.snippet.replace("{repo_id}", inputs.repo_id)
    auto = "AutoModelForCausalLM" if run.kind == "causal" else "AutoModelForSeq2SeqLM"
    tok_from = (inputs.repo_id if inputs.tokenizer_included or inputs.weights == "full" or not inputs.base_model
                else inputs.base_model)
    lines = ["```python"]
    if run.routed:
        lines += ["import json", "", "import torch", "from huggingface_hub import hf_hub_download"]
    if extras.register_module:
        lines.append(f"import {extras.register_module}  # registers this adapter type with peft "
                     "(pip install instructmt)")
    lines.append(f"from transformers import {auto}, AutoTokenizer")
    if inputs.weights == "full":
        lines += ["", f'model = {auto}.from_pretrained("{inputs.repo_id}")']
    else:
        base_args = (f'"{inputs.repo_id}", subfolder="{inputs.base_in_repo}"' if inputs.base_in_repo
                     else f'"{inputs.base_model}"')
        lines += ["from peft import PeftModel", "",
                  f"base = {auto}.from_pretrained({base_args})",
                  f'model = PeftModel.from_pretrained(base, "{inputs.repo_id}").eval()']
    lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{tok_from}")')
    example_task = ((run.task_names if run.routed else run.held_out) or run.task_names or ["TASK"])[0]
    encoding = run.meta.get("encoding") or ((run.config or {}).get("data") or {}).get("encoding") or "def+pos2"
    lines += ["", f"# render prompts as in training (encoding {encoding!r}), e.g. with instructmt:",
              f"#   instructmt prompt show {example_task} --tasks TASK_DIR --encoding {encoding}",
              'inputs = tokenizer("Definition: ... Now complete the following example - Input: ... Output:", '
              'return_tensors="pt")']
    if run.routed:
        first = run.task_names[0] if run.task_names else "task"
        lines += ["# task ids: the router row of each task (the table under Method)",
                  f'TASK_IDS = json.load(open(hf_hub_download("{inputs.repo_id}", "tasks.json")))["task_ids"]',
                  f'task_ids = torch.tensor([TASK_IDS["{first}"]])  # one id per example in the batch',
                  "out = model.generate(**inputs, task_ids=task_ids, max_new_tokens=64)"]
    else:
        lines.append("out = model.generate(**inputs, max_new_tokens=64)")
    lines += ["print(tokenizer.decode(out[0], skip_special_tokens=True))", "```"]
    return "\n".join(lines)


def _whole_model(run: RunInfo) -> bool:
    return run.method in ADAPTERS and ADAPTERS.get(run.method).whole_model


def _training_table(run: RunInfo) -> str:
    cfg = run.config or {}
    data, adapter = cfg.get("data") or {}, cfg.get("adapter") or {}
    rows = [("method", run.method), ("model kind", run.kind),
            ("encoding", data.get("encoding")), ("epochs", cfg.get("epochs")), ("max steps", cfg.get("max_steps")),
            ("batch size", cfg.get("batch_size")), ("learning rate", cfg.get("learning_rate")),
            ("mixing cap", data.get("mixing_cap")), ("temperature", data.get("temperature")),
            ("seed", cfg.get("seed")), ("adapter rank", adapter.get("r") if not _whole_model(run) else None)]
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows if v is not None)


def _task_list(names: list[str], families: dict[str, str]) -> str:
    if not names:
        return "_none recorded_"
    items = ", ".join(f"`{n}`" + (f" ({families[n]})" if n in families else "") for n in names)
    if len(names) <= 12:
        return items
    return f"<details><summary>{len(names)} tasks</summary>\n\n{items}\n\n</details>"


def _evaluation_section(run: RunInfo, scores: list[TaskScore]) -> list[str]:
    parts = ["## Held-out evaluation", ""]
    if not scores:
        return parts + ["_No evaluation results were found in this run (eval/metrics.json)._"]
    metrics = sorted({m for s in scores for m in s.scores}, key=lambda m: (m not in FIRST_METRICS, m))
    row = lambda label, fam, vals, bold=False: (  # noqa: E731
        f"| {label} | {fam} | " + " | ".join(
            (f"**{vals[m]:.2f}**" if bold else f"{vals[m]:.2f}") if m in vals else "–" for m in metrics) + " |")
    parts += ["| task | family | " + " | ".join(metrics) + " |", "|---|---|" + "---:|" * len(metrics)]
    held = [s for s in scores if s.held_out]
    for s in scores:
        parts.append(row(f"`{s.task}`" + ("" if s.held_out else " (seen)"), s.family, s.scores))
    for fam, vals in sorted(family_scores(run, held or scores).items()):
        parts.append(row("**all held-out**" if held else "**all**", fam, vals, bold=True))
    overall = {m: float(v) for m, v in (run.metrics or {}).items() if m in metrics and isinstance(v, (int, float))}
    if overall:
        parts.append(row("**overall**", "", overall, bold=True))
    for name, vals in sorted(((run.metrics or {}).get("baselines") or {}).items()):
        if isinstance(vals, dict):
            parts.append(row(f"baseline: {name.replace('_', '-')}", "", {
                m: float(v) for m, v in vals.items() if m in metrics and isinstance(v, (int, float))}))
    parts += ["", "Scores are ×100, from `eval/metrics.json` (per-category and per-task details in "
              "`eval/report.md`). Baselines: copy-input predicts the instance input, copy-demo the "
              "demonstration's output."]
    return parts


def build_card(inputs: CardInputs) -> ModelCard:
    run, extras = inputs.run, inputs.extras
    scores = task_scores(run)
    families = run.task_families()
    fam_list = _families(inputs)
    library = extras.library_name or ("peft" if inputs.weights == "adapter" else "transformers")
    model_name = inputs.repo_id.split("/")[-1]
    tags = ["instructmt", run.method, *extras.tags, *fam_list]
    if library == "peft" and inputs.base_model:
        tags.append(f"base_model:adapter:{inputs.base_model}")
    data = ModelCardData(
        base_model=inputs.base_model, library_name=library,
        tags=list(dict.fromkeys(tags)),
        datasets=sorted({d.split("=", 1)[-1] for d in inputs.datasets}) or None,
        pipeline_tag=None if run.method == RETRIEVER_METHOD else (
            "text-generation" if run.kind == "causal" else "text2text-generation"),
        model_name=model_name, eval_results=_eval_results(inputs, scores) or None)

    what = extras.what or {"full": "fully fine-tuned model", "adapter": f"**{run.method}** adapter"}[inputs.weights]
    if inputs.base_model:
        base_text = f" for [`{inputs.base_model}`](https://huggingface.co/{inputs.base_model})"
        if run.meta.get("base_weights"):  # e.g. trained on weights dequantized from a GGUF file
            base_text += f" (trained on base weights {run.meta['base_weights']})"
    elif inputs.base_in_repo:
        base_text = (f" for a random-init (untrained) `{run.base_model}` base, shipped in this repo "
                     f"under `{inputs.base_in_repo}/`")
    else:
        base_text = f" trained from a random-init `{run.base_model}` (no pretrained base)"
    parts = [f"# {model_name}", "",
             f"A {what}{base_text}, trained with "
             f"instructmt {__version__} on {len(run.seen)} seen task(s)"
             + (f" from {', '.join(fam_list)}" if fam_list else "")
             + (f" and evaluated on {len(run.held_out)} held-out task(s)." if run.held_out else "."),
             "", "## Training", "", _training_table(run), "",
             f"**Seen tasks:** {_task_list(run.seen, families)}", "",
             f"**Held-out tasks:** {_task_list(run.held_out, families)}", "",
             "The full task list and split are in `tasks.json`; the training config is `training_config.yaml`.",
             "", "## Method", "", extras.section or f"`{run.method}`", "",
             "## How to use", "", _snippet(inputs), ""]
    if not extras.snippet:
        parts += ["With instructmt installed, `instructmt.models.loading.load_run(snapshot_download(REPO))` "
                  "returns the model, the tokenizer and the run metadata in one call.", ""]
    parts += _evaluation_section(run, scores)
    for png in (f for f in inputs.eval_files if f.endswith(".png")):
        parts += ["", f"![{png.split('/')[-1][:-4]}]({png})"]
    parts += ["", "## Files", "", "\n".join(f"- `{f}`" for f in inputs.files), ""]
    body = "\n".join(parts)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def card_metadata(card_text: str) -> dict[str, Any]:
    """The YAML metadata of a card as a dict (for checks and tests)."""
    return ModelCard(card_text).data.to_dict()
