"""`instructmt eval`: held-out-task evaluation of a trained model, with a per-category report."""

from __future__ import annotations

import argparse

from ..io_safety import REPORT_MARKER


def _run(args) -> int:
    from ..evaluation.zero_shot import is_base_model_reference  # start-up time: the model stack loads later
    from ..workflows.evaluate import evaluate_base, evaluate_run

    if is_base_model_reference(args.model):
        evaluate_base(args.model, args.output, tasks=args.tasks, split=args.split, max_instances=args.max_instances,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, encoding=args.encoding,
                      max_source_length=args.max_source_length, use_chat_template=args.chat_template,
                      demos=args.demos, k=args.k, demo_budget=args.demo_budget, retriever=args.retriever,
                      trust_remote_code=args.trust_remote_code, seed=args.seed)
        return 0
    evaluate_run(args.model, args.output, tasks=args.tasks, split=args.split, max_instances=args.max_instances,
                 batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, encoding=args.encoding,
                 demos=args.demos, k=args.k, demo_budget=args.demo_budget, retriever=args.retriever,
                 trust_remote_code=args.trust_remote_code, seed=args.seed)
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained model (or a base model zero-shot) on held-out tasks",
                       description="Generate on each task's first N instances in length-sorted batches and "
                                   "write predictions.jsonl (Tk-Instruct format), metrics.json (exact_match, "
                                   "rougeL overall / per task / per category), report.md and categories.png.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a trained run (RUN/model or RUN), or a base model evaluated zero-shot: a preset "
                        "(smollm2-135m), a Hub id, a local HF directory or a .gguf file (then --tasks is required)")
    p.add_argument("--tasks", nargs="+", help="task directories/files and/or task names "
                   "(default: the run's held-out tasks)")
    p.add_argument("--split", choices=["test", "all"], default="test",
                   help="for a directory with splits/test_tasks.txt: evaluate only those (test) or every task (all)")
    p.add_argument("--output", required=True,
                   help="report directory, written atomically. Refused when it is an existing file, or is, holds "
                        "or lies inside a model / run / checkpoint directory (RUN/eval is fine) or the input "
                        f"tasks; an existing directory is replaced only when it is an instructmt report (it holds "
                        f"{REPORT_MARKER}) or empty. A second eval writing the same --output at once is refused")
    p.add_argument("--max-instances", type=int, default=100, help="first N instances per task (SNI uses 100)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int,
                   help="default: the run's max_target_length; 32 for a base model")
    p.add_argument("--encoding", help="prompt encoding (default: the one the model was trained with; def+pos1, "
                   "as in the demo, for a base model)")
    p.add_argument("--max-source-length", type=int,
                   help="prompt token limit for a base model (default 1024; a run uses its own)")
    p.add_argument("--chat-template", action="store_true",
                   help="base model: wrap prompts in the tokenizer's chat template (default: plain prompts, as "
                        "the demo trains)")
    p.add_argument("--demos", choices=["none", "random", "bm25", "dense", "udr"], default="none",
                   help="demonstrations picked from the task's own instance pool (never the test instance), "
                        "replacing the encoding's fixed positive examples; none keeps those fixed examples")
    p.add_argument("--k", type=int, default=2, help="number of demonstrations")
    p.add_argument("--demo-budget", type=int, help="token budget for demonstrations")
    p.add_argument("--retriever", help="trained UDR retriever directory (for --demos udr)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=_run)
