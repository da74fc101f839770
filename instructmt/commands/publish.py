"""`instructmt publish RUN_DIR --repo-id OWNER/NAME`: upload a run's adapter, card and results to the Hub."""

from __future__ import annotations

import argparse

DESCRIPTION = """Publish a training run to the Hugging Face Hub in ONE commit (all files or none):
the adapter in PEFT format (safetensors only), the tokenizer when it differs from the base
model's, the training config, the task list and split, eval/metrics.json, eval/report.md, the
plots, and a model card (base_model as a Hub id, model-index per task family, a loading snippet).

The token comes from HF_TOKEN or `hf auth login`; it is never written to any file.
The Hub endpoint is huggingface_hub's (set HF_ENDPOINT to use another)."""

EPILOG = """examples:
  instructmt publish runs/lora --repo-id me/t5-lora-sni --dry-run --output /tmp/preview
  instructmt publish runs/lora --repo-id me/t5-lora-sni --private
  instructmt publish runs/mhr --repo-id me/t5-mhr --base-model-id google/t5-v1_1-base --revision v1
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("publish", help="upload a run (adapter + model card + eval results) to the Hub",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="run directory (holding model/), a model folder (e.g. an exported QFA subnet), "
                        "or a saved UDR retriever folder (retriever.json + encoder/)")
    p.add_argument("--repo-id", required=True, metavar="OWNER/NAME", help="Hub model repository to publish to")
    p.add_argument("--private", action="store_true", help="create the repository as private (if it is new)")
    p.add_argument("--revision", metavar="BRANCH", default=None,
                   help="branch to commit to (created from main if missing; default: main)")
    p.add_argument("--base-model-id", metavar="ID", default=None,
                   help="Hub id of the base model; required when the run's base was loaded from a local path")
    p.add_argument("--tokenizer", choices=("auto", "always", "never"), default="auto",
                   help="include the tokenizer: auto = only when it differs from the base model's (default)")
    p.add_argument("--dataset", action="append", default=[], metavar="[FAMILY=]ID",
                   help="Hub dataset id for the card's datasets (repeatable); FAMILY=ID also names the "
                        "dataset of that task family's evaluation results")
    p.add_argument("--include-base", action="store_true",
                   help="ship the run's saved base weights (model/base/, written for random-init presets such "
                        "as tiny-t5) under base/ so the repo is self-contained")
    p.add_argument("--eval-dir", metavar="DIR", default=None,
                   help="evaluation folder to publish (default: RUN/eval, else RUN/report/held_out)")
    p.add_argument("--dry-run", action="store_true",
                   help="write the exact folder that would be uploaded and print the card; upload nothing")
    p.add_argument("--output", metavar="DIR", default=None,
                   help="with --dry-run: where to write the folder (must be empty; default: a new temp folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import PublishError, publish

    if args.output and not args.dry_run:
        raise PublishError("--output only goes with --dry-run")
    if args.output:
        from ..io_safety import check_output_path
        check_output_path(args.output, purpose="--output", inputs=[args.run_dir])
    result = publish(args.run_dir, args.repo_id, private=args.private, revision=args.revision,
                     base_model_id=args.base_model_id, tokenizer=args.tokenizer, datasets=args.dataset,
                     dry_run=args.dry_run, output=args.output, include_base=args.include_base,
                     eval_dir=args.eval_dir)
    for path, why in result.skipped:
        print(f"skipped {path}: {why}")
    if result.dry_run:
        print(result.card_text)
        print(f"\ndry run: {len(result.files)} files written to {result.folder} (nothing uploaded):")
        for f in result.files:
            print(f"  {f}")
        return 0
    print(f"published {len(result.files)} files to {result.repo_id}@{result.revision} in one commit: "
          f"{result.commit_url}")
    return 0
