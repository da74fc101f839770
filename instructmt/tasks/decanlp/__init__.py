"""decaNLP as question answering: converters from the ten original source formats.

Every example becomes (context, question, answer) with decaNLP's exact questions
(salesforce/decaNLP text/torchtext/datasets/generic.py, ANCHORS.md §2). Each Instance keeps
`fields = {"context", "question"}` for the `qa` encoding (prompts/decanlp_qa.jinja) and its
`input` is that rendered "Context: {c} Question: {q}" string.

Sources understood (one module and one TaskFormat each, detected by name and content):
  SQuAD v1.1 / v2.0 JSON (unanswerable -> "unanswerable"), IWSLT parallel text (`X.en` + `X.de`,
  also the `train.tags.*` and `*.xml` release layouts), CNN/DailyMail `.story` directories,
  MultiNLI / SNLI JSONL, SST CSV (binary and fine-grained), QA-SRL `wiki1.*.qa`, QA-ZRE
  `relation_splits/*.N` TSV, WOZ 2.0 JSON, WikiSQL JSONL (+ `X.tables.jsonl`), MWSC `schema.txt`.
"""

from __future__ import annotations

from .cnn_dailymail import load_cnn_dailymail, story_to_qa
from .common import FAMILY, QA_TEMPLATE, QUESTIONS, TASK_METRICS, UNANSWERABLE, qa_input, qa_instance
from .companions import companion_of
from .iwslt import load_iwslt
from .mwsc import load_mwsc
from .nli import load_nli, nli_context_question
from .qasrl import load_qasrl
from .qazre import load_qazre
from .squad import load_squad
from .sst import load_sst
from .wikisql import AGG_OPS, COND_OPS, SYMS, load_wikisql, sql_to_text, wikisql_context
from .woz import load_woz, woz_dialogue_to_qa

__all__ = ["AGG_OPS", "COND_OPS", "FAMILY", "QA_TEMPLATE", "QUESTIONS", "SYMS", "TASK_METRICS", "UNANSWERABLE",
           "companion_of", "load_cnn_dailymail", "load_iwslt", "load_mwsc", "load_nli", "load_qasrl", "load_qazre",
           "load_squad", "load_sst", "load_wikisql", "load_woz", "nli_context_question", "qa_input", "qa_instance",
           "sql_to_text", "story_to_qa", "wikisql_context", "woz_dialogue_to_qa"]
