"""decaNLP as question answering: converters from the ten original source formats.

Every example becomes (context, question, answer) with decaNLP's exact questions
(salesforce/decaNLP text/torchtext/datasets/generic.py, ANCHORS.md §2). Each Instance keeps
`fields = {"context", "question"}` for the `qa` encoding (prompts/decanlp_qa.jinja) and its
`input` is that rendered "Context: {c} Question: {q}" string.

Sources understood (one TaskFormat each, detected by name and content):
  SQuAD v1.1 / v2.0 JSON (unanswerable -> "unanswerable"), IWSLT parallel text (`X.en` + `X.de`,
  also the `train.tags.*` and `*.xml` release layouts), CNN/DailyMail `.story` directories,
  MultiNLI / SNLI JSONL, SST CSV (binary and fine-grained), QA-SRL `wiki1.*.qa`, QA-ZRE
  `relation_splits/*.N` TSV, WOZ 2.0 JSON, WikiSQL JSONL (+ `X.tables.jsonl`), MWSC `schema.txt`.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from .textio import iter_jsonl, read_json, read_text
from ..errors import TaskFormatError
from ..templates import get_template
from .registry import TaskFormat, register_format
from .schema import Instance, Task

FAMILY = "decanlp"
UNANSWERABLE = "unanswerable"

QUESTIONS = {
    "cnn_dailymail": "What is the summary?",
    "sst": "Is this review negative or positive?",
    "sst_fine": "Is this review very negative, negative, neutral, positive, or very positive?",
    "woz": "What is the change in state?",
    "wikisql": "What is the translation from English to SQL?",
}
# decaNLP task key -> (headline metric, all metrics reported). The key order is decaScore's.
TASK_METRICS: dict[str, list[str]] = {
    "squad": ["nf1", "nem"],
    "iwslt.en.de": ["bleu"],
    "cnn_dailymail": ["avg_rouge"],
    "multinli.in.out": ["em"],
    "sst": ["em"],
    "srl": ["nf1"],
    "zre": ["corpus_f1", "nf1"],
    "woz.en": ["dsem"],
    "wikisql": ["lfem"],
    "schema": ["em"],
}
_DEFINITIONS = {
    "squad": "Answer the question with a span of the context, or 'unanswerable'.",
    "iwslt.en.de": "Translate the context as the question asks.",
    "cnn_dailymail": "Summarise the article.",
    "multinli.in.out": "Say whether the premise entails, contradicts or is neutral to the hypothesis.",
    "sst": "Classify the sentiment of the review.",
    "srl": "Answer the question about the predicate with a span of the sentence.",
    "zre": "Answer the relation question with a span of the sentence, or 'unanswerable'.",
    "woz.en": "Give the change in dialogue state for this turn.",
    "wikisql": "Translate the question into SQL over the table.",
    "schema": "Resolve the pronoun: answer with one of the two choices.",
}

QA_TEMPLATE = "decanlp_qa.jinja"  # the template of the `qa` encoding (prompts/render.py)


@lru_cache(maxsize=1)
def _qa_template():
    return get_template(QA_TEMPLATE)


def qa_input(context: str, question: str) -> str:
    """The model input for a QA triple, rendered by the `qa` template (one source of truth)."""
    return _qa_template().render(fields={"context": context, "question": question}, input="")


def qa_instance(iid: str, context: str, question: str, answers: list[str], **extra: Any) -> Instance:
    return Instance(id=iid, input=qa_input(context, question), outputs=answers,
                    fields={"context": context, "question": question, **extra})


def _task(key: str, name: str, instances: list[Instance], path: Path, **extra: Any) -> Task:
    if not instances:
        raise TaskFormatError("holds no examples", path=str(path), task=name)
    return Task(name=name, family=FAMILY, definition=_DEFINITIONS[key], instances=instances,
                metrics=list(TASK_METRICS[key]), encoding="qa", source=str(path),
                categories=[key], extra={"decanlp_task": key, **extra})


def _task_name(key: str, path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "_", path.stem).strip("_")
    return f"decanlp_{key.split('.')[0]}_{stem}"


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# File reading with errors naming the file and line (shared with the other families).
_read_text, _read_json, _jsonl = read_text, read_json, iter_jsonl


def _head(path: Path, n: int = 4096) -> str:
    with path.open("rb") as fh:
        return fh.read(n).decode("utf-8", errors="replace")


def _first_jsonl_record(path: Path) -> dict | None:
    line = _head(path, 65536).split("\n", 1)[0]
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


# --- SQuAD --------------------------------------------------------------------------------
def load_squad(path: str | Path) -> list[Task]:
    """SQuAD v1.1/v2.0 JSON: one instance per question; all gold answers are references."""
    p = Path(path)
    data = _read_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise TaskFormatError("expected {'data': [articles]}", path=str(p), field="data")
    name = _task_name("squad", p)
    out = []
    for ai, art in enumerate(data["data"]):
        for pi, para in enumerate(art.get("paragraphs", [])):
            ctx = para.get("context")
            if not isinstance(ctx, str):
                raise TaskFormatError("paragraph has no context", path=str(p), task=name,
                                      field=f"data[{ai}].paragraphs[{pi}].context")
            for qi, qa in enumerate(para.get("qas", [])):
                where = f"data[{ai}].paragraphs[{pi}].qas[{qi}]"
                if "question" not in qa:
                    raise TaskFormatError("missing 'question'", path=str(p), task=name, field=where)
                question = " ".join(qa["question"].split())
                answers = [a["text"] for a in qa.get("answers", []) if isinstance(a, dict) and "text" in a]
                if qa.get("is_impossible") or not answers:
                    if not qa.get("is_impossible") and data.get("version", "v1.1") != "v2.0":
                        raise TaskFormatError("question has no answers", path=str(p), task=name, field=where)
                    answers = [UNANSWERABLE]
                out.append(qa_instance(str(qa.get("id", f"{name}-{len(out)}")), ctx, question, _dedupe(answers)))
    return [_task("squad", name, out, p, version=data.get("version", "v1.1"))]


def _is_squad(path: Path) -> bool:
    if path.suffix != ".json":
        return False
    head = _head(path, 16384)
    return '"data"' in head and '"paragraphs"' in head and '"qas"' in head


# --- IWSLT --------------------------------------------------------------------------------
_LANGS = {"en": "English", "de": "German", "fr": "French", "ar": "Arabic", "cs": "Czech"}
_SEG = re.compile(r"<seg[^>]*>(.*?)</seg>", re.S)


def _iwslt_lines(path: Path) -> list[str]:
    """Plain text, the `train.tags` layout (tag lines dropped) or `*.xml` (<seg> contents)."""
    text = _read_text(path)
    if path.suffix == ".xml" or path.name.endswith(".xml"):
        return [" ".join(s.split()) for s in _SEG.findall(text)]
    return [ln.strip() for ln in text.splitlines() if not ln.lstrip().startswith("<")]


def _iwslt_pair(path: Path) -> tuple[Path, str, str, str] | None:
    """(target path, src lang, trg lang, language pair) for an English-side IWSLT file."""
    name = path.name
    m = re.match(r"^(.*)\.(en)(\.xml)?$", name)
    if not m:
        return None
    for trg in ("de", "fr", "ar", "cs"):
        cand = path.with_name(f"{m.group(1)}.{trg}{m.group(3) or ''}")
        if cand.exists():
            return cand, "en", trg, f"en.{trg}"
    return None


def load_iwslt(path: str | Path) -> list[Task]:
    p = Path(path)
    pair = _iwslt_pair(p)
    if pair is None:
        raise TaskFormatError("IWSLT source needs an English file X.en with its target X.de beside it", path=str(p))
    trg_path, src, trg, lp = pair
    question = f"Translate from {_LANGS[src]} to {_LANGS[trg]}"
    src_lines, trg_lines = _iwslt_lines(p), _iwslt_lines(trg_path)
    if len(src_lines) != len(trg_lines):
        raise TaskFormatError(f"{len(src_lines)} source lines but {len(trg_lines)} lines in {trg_path.name}",
                              path=str(p))
    name = _task_name("iwslt", p)
    out = [qa_instance(f"{name}-{i}", s, question, [t]) for i, (s, t) in enumerate(zip(src_lines, trg_lines))
           if s and t]
    return [_task("iwslt.en.de", name, out, p, language_pair=lp, target_file=str(trg_path))]


def _is_iwslt(path: Path) -> bool:
    return _iwslt_pair(path) is not None


# --- CNN / DailyMail -------------------------------------------------------------------------
_END_TOKENS = {".", "!", "?", "...", "'", "`", '"', "\u2019", "\u201d", ")"}


def _fix_missing_period(line: str) -> str:
    if "@highlight" in line or not line or line[-1] in _END_TOKENS:
        return line
    return line + "."


def story_to_qa(text: str) -> tuple[str, str]:
    """(article, summary) from a `.story` file, as decaNLP builds them (NFKC, periods fixed)."""
    article, highlights, in_highlight = [], [], False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        line = _fix_missing_period(line)
        if line.startswith("@highlight"):
            in_highlight = True
        elif in_highlight:
            highlights.append(line)
        else:
            article.append(line)
    return unicodedata.normalize("NFKC", " ".join(article)), unicodedata.normalize("NFKC", " ".join(highlights))


def _stories(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.story"))


@lru_cache(maxsize=64)
def _first_story(directory: str, mtime_ns: int) -> str | None:
    """Name of a directory's first story; cached so detecting 90k stories stays linear."""
    first = min((p.name for p in Path(directory).glob("*.story")), default=None)
    return first


def _first_story_of(path: Path) -> str | None:
    d = path.parent
    return _first_story(str(d), d.stat().st_mtime_ns)


def load_cnn_dailymail(path: str | Path) -> list[Task]:
    """All `.story` files of a directory as one task (pass the directory or any story in it)."""
    p = Path(path)
    directory = p if p.is_dir() else p.parent
    out = []
    for story in _stories(directory):
        context, summary = story_to_qa(_read_text(story))
        if not summary:
            raise TaskFormatError("story has no @highlight lines", path=str(story))
        out.append(qa_instance(story.stem, context, QUESTIONS["cnn_dailymail"], [summary]))
    name = f"decanlp_cnn_dailymail_{re.sub(r'[^A-Za-z0-9]+', '_', directory.name).strip('_')}"
    return [_task("cnn_dailymail", name, out, directory)]


def _is_story_representative(path: Path) -> bool:
    """One task per story directory: its first `.story` file stands for the directory."""
    if path.suffix != ".story":
        return False
    return _first_story_of(path) == path.name


# --- MultiNLI / SNLI ---------------------------------------------------------------------------
def nli_context_question(premise: str, hypothesis: str) -> tuple[str, str]:
    return (f'Premise: "{premise}"', f'Hypothesis: "{hypothesis}" -- entailment, neutral, or contradiction?')


def load_nli(path: str | Path) -> list[Task]:
    """MultiNLI/SNLI JSONL. Pairs without a gold label ('-') are skipped and counted."""
    p = Path(path)
    name = _task_name("nli", p)
    out, skipped = [], 0
    for n, rec in _jsonl(p):
        for key in ("sentence1", "sentence2", "gold_label"):
            if key not in rec:
                raise TaskFormatError(f"missing key {key!r}", path=str(p), line=n, task=name, field=key)
        label = rec["gold_label"]
        if label not in ("entailment", "neutral", "contradiction"):
            skipped += 1
            continue
        c, q = nli_context_question(rec["sentence1"], rec["sentence2"])
        out.append(qa_instance(str(rec.get("pairID", f"{name}-{n}")), c, q, [label], genre=rec.get("genre", "")))
    return [_task("multinli.in.out", name, out, p, skipped_no_gold=skipped)]


def _is_nli(path: Path) -> bool:
    if path.suffix != ".jsonl":
        return False
    rec = _first_jsonl_record(path)
    return rec is not None and {"sentence1", "sentence2", "gold_label"} <= set(rec)


# --- SST ---------------------------------------------------------------------------------------
_SST_BINARY = ["negative", "positive"]
_SST_FINE = ["very negative", "negative", "neutral", "positive", "very positive"]


def load_sst(path: str | Path) -> list[Task]:
    """SST CSV `label,sentence` (header line). Labels 0-1: binary; any label above 1, or a
    file named *fine*: the five-class version."""
    p = Path(path)
    with p.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip() for c in rows[0][:2]] != ["label", "sentence"]:
        raise TaskFormatError("expected the header 'label,sentence'", path=str(p), line=1)
    body = rows[1:]
    try:
        labels = [int(r[0]) for r in body]
    except (ValueError, IndexError):
        bad = next(i for i, r in enumerate(body) if not r or not r[0].strip().lstrip("-").isdigit())
        raise TaskFormatError("label is not an integer", path=str(p), line=bad + 2, field="label") from None
    fine = "fine" in p.name or any(lab > 1 for lab in labels)
    names, question = (_SST_FINE, QUESTIONS["sst_fine"]) if fine else (_SST_BINARY, QUESTIONS["sst"])
    name = _task_name("sst", p)
    out = []
    for i, (row, lab) in enumerate(zip(body, labels)):
        if not 0 <= lab < len(names):
            raise TaskFormatError(f"label {lab} out of range 0..{len(names) - 1}", path=str(p), line=i + 2)
        out.append(qa_instance(f"{name}-{i}", row[-1], question, [names[lab]]))
    return [_task("sst", name, out, p, fine_grained=fine)]


def _is_sst(path: Path) -> bool:
    return path.suffix == ".csv" and _head(path, 64).splitlines()[0].strip() in ("label,sentence", '"label","sentence"')


# --- QA-SRL ------------------------------------------------------------------------------------
def _srl_clean(s: str) -> str:
    """decaNLP's detokenisation of QA-SRL text (PTB brackets, spacing around punctuation)."""
    s = " ".join(s.split())
    for a, b in (("-LRB-", "("), ("-RRB-", ")"), ("-LAB-", "<"), ("-RAB-", ">"), ("-AMP-", "&"), ("%pw", " ")):
        s = s.replace(a, b)
    for p in (" .", " ,", " ;", " !", " ?", " :", " )", " 'll", " n't ", " %", " 't", " 's", " 'm", " 'd", " 're"):
        s = s.replace(p, p.lstrip())
    for p in ("( ", "$ "):
        s = s.replace(p, p.rstrip())
    s = s.replace(" - ", "-")
    for p in ("``", "`", "''", "\u201c", "\u201d", " '"):
        s = s.replace(p, "")
    return " ".join(s.split()).strip()


def _align_to_context(answer: str, context: str) -> str:
    if answer in context or not answer:
        return answer
    for cand in (answer[0].lower() + answer[1:], answer[0].upper() + answer[1:], answer.lower()):
        if cand in context:
            return cand
    return answer


def load_qasrl(path: str | Path) -> list[Task]:
    """QA-SRL `wiki1.{train,dev,test}.qa`: sentence blocks; each question line is the seven
    slots, `?`, then answers separated by `###`."""
    p = Path(path)
    name = _task_name("srl", p)
    lines = []
    for raw in _read_text(p).splitlines():
        line = " ".join(raw.split())
        if not line:
            lines.append("")
            continue
        first = line.split()[0]
        if "WIKI1" in first.split("_")[0]:
            continue  # sentence id line
        if first.isdigit() and len(line.split()) <= 3:
            continue  # predicate line: index, verb, number of questions
        lines.append(line)
    out, context, new_block = [], "", True
    for n, line in enumerate(lines):
        if not line:
            new_block = True
            continue
        if new_block:
            context, new_block = _srl_clean(line), False
            continue
        if "?" not in line:
            raise TaskFormatError(f"question line without '?': {line[:60]!r}", path=str(p), task=name)
        q, answers = line.split("?", 1)
        question = _srl_clean(q.replace(" _", "") + "?")
        all_answers = [_align_to_context(_srl_clean(a), context) for a in answers.split("###")]
        all_answers = _dedupe([a for a in all_answers if a])
        if not all_answers:
            raise TaskFormatError(f"question {question!r} has no answer", path=str(p), task=name)
        out.append(qa_instance(f"{name}-{len(out)}", context, question, all_answers))
    return [_task("srl", name, out, p)]


def _is_qasrl(path: Path) -> bool:
    return path.suffix == ".qa" and "WIKI1_" in _head(path, 256)


# --- QA-ZRE ------------------------------------------------------------------------------------
def load_qazre(path: str | Path) -> list[Task]:
    """QA-ZRE `relation_splits/{train,dev,test}.N`: relation, question template (XXX = subject),
    subject, sentence[, answer spans...] separated by tabs. No span: 'unanswerable'."""
    p = Path(path)
    name = _task_name("zre", p)
    out = []
    for n, raw in enumerate(_read_text(p).splitlines(), start=1):
        if not raw.strip():
            continue
        parts = raw.split("\t")
        if len(parts) < 4:
            raise TaskFormatError(f"expected at least 4 tab-separated fields, got {len(parts)}",
                                  path=str(p), line=n, task=name)
        relation, template, subject, context = parts[:4]
        answer = ", ".join(a.strip() for a in parts[4:] if a.strip())
        out.append(qa_instance(f"{name}-{n}", context.strip(), template.replace("XXX", subject),
                               [answer or UNANSWERABLE], relation=relation))
    return [_task("zre", name, out, p)]


def _is_qazre(path: Path) -> bool:
    if not path.suffix[1:].isdigit():
        return False
    first = _head(path, 4096).split("\n", 1)[0].split("\t")
    return len(first) >= 4 and "XXX" in first[1]


# --- WOZ 2.0 -----------------------------------------------------------------------------------
def woz_dialogue_to_qa(dialogue: list[dict]) -> list[tuple[str, str]]:
    """(context, delta-state answer) per turn, as decaNLP builds them."""
    previous_inform: list = []
    out = []
    for turn in dialogue:
        acts = [": ".join(a) if isinstance(a, list) else a for a in turn.get("system_acts", [])]
        actions = ", ".join(acts)
        context = (actions + " -- " if actions else "") + turn["transcript"]
        inform, request, current = [], [], []
        for item in turn.get("belief_state", []):
            for slot in item.get("slots", []):
                if item.get("act") == "inform":
                    current.append(slot)
                    if slot not in previous_inform:
                        inform.append(slot)
                else:
                    request.append(slot[1])
        previous_inform = current
        answer = ", ".join(f"{k}: {v}" for k, v in inform) + ";"
        if request:
            answer += " " + ", ".join(request)
        out.append((" ".join(context.split()), answer if len(answer) > 1 else "None"))
    return out


def load_woz(path: str | Path) -> list[Task]:
    p = Path(path)
    data = _read_json(p)
    if not isinstance(data, list):
        raise TaskFormatError("expected a list of dialogues", path=str(p))
    m = re.search(r"_(en|de|it)\.json$", p.name)
    lang = m.group(1) if m else "en"
    name = _task_name("woz", p)
    out = []
    for di, d in enumerate(data):
        if not isinstance(d, dict) or "dialogue" not in d:
            raise TaskFormatError("dialogue without 'dialogue' turns", path=str(p), task=name, field=f"[{di}]")
        try:
            turns = woz_dialogue_to_qa(d["dialogue"])
        except (KeyError, TypeError, ValueError) as e:
            raise TaskFormatError(f"malformed turn ({type(e).__name__}: {e})", path=str(p), task=name,
                                  field=f"[{di}].dialogue") from None
        dialogue_id = d.get("dialogue_idx", di)
        for ti, (context, answer) in enumerate(turns):
            out.append(qa_instance(f"woz_{lang}_{dialogue_id}_{ti}", context, QUESTIONS["woz"], [answer],
                                   dialogue=f"{lang}_{dialogue_id}", turn=ti))
    return [_task("woz.en", name, out, p, language=lang)]


def _is_woz(path: Path) -> bool:
    if path.suffix != ".json":
        return False
    head = _head(path, 8192)
    return '"dialogue"' in head and '"belief_state"' in head and '"transcript"' in head


# --- WikiSQL -----------------------------------------------------------------------------------
AGG_OPS = ["", "MAX", "MIN", "COUNT", "SUM", "AVG"]
COND_OPS = ["=", ">", "<", "OP"]
SYMS = ["SELECT", "WHERE", "AND", "COL", "TABLE", "CAPTION", "PAGE", "SECTION", "OP", "COND", "QUESTION",
        "AGG", "AGGOPS", "CONDOPS"]


def sql_to_text(sql: dict, header: list[str] | None) -> str:
    """WikiSQL's Query repr: `SELECT {agg} {col} FROM table [WHERE col op val AND ...]`."""
    col = (lambda i: header[i]) if header is not None else (lambda i: f"col{i}")
    rep = f"SELECT {AGG_OPS[sql['agg']]} {col(sql['sel'])} FROM table"
    if sql.get("conds"):
        rep += " WHERE " + " AND ".join(f"{col(i)} {COND_OPS[o]} {v}" for i, o, v in sql["conds"])
    return " ".join(rep.split())


def wikisql_context(question: str, header: list[str]) -> str:
    keywords = ", ".join(AGG_OPS[1:] + COND_OPS + SYMS)
    return f"The table has columns {', '.join(header)} and key words {keywords} -- {question}"


def _tables_for(path: Path) -> Path:
    return path.with_name(path.name[: -len(path.suffix)] + ".tables" + path.suffix)


def load_wikisql(path: str | Path, *, require_tables: bool = False) -> list[Task]:
    """WikiSQL JSONL with `X.tables.jsonl` beside it. Without the tables file, a record's own
    `header` is used; failing that, columns become `col0, col1, ...` and the task carries a note
    (or, with require_tables, this is an error)."""
    p = Path(path)
    name = _task_name("wikisql", p)
    tables_path = _tables_for(p)
    tables = {}
    if tables_path.exists():
        tables = {rec["id"]: rec for _, rec in _jsonl(tables_path) if "id" in rec}
    notes = []
    out = []
    placeholder = 0
    for n, rec in _jsonl(p):
        for key in ("question", "sql"):
            if key not in rec:
                raise TaskFormatError(f"missing key {key!r}", path=str(p), line=n, task=name, field=key)
        header = None
        if rec.get("table_id") in tables:
            header = tables[rec["table_id"]]["header"]
        elif isinstance(rec.get("header"), list):
            header = rec["header"]
        elif require_tables or tables:
            raise TaskFormatError(f"table {rec.get('table_id')!r} not found "
                                  f"({tables_path.name} {'lacks it' if tables else 'is missing'})",
                                  path=str(p), line=n, task=name)
        sql = rec["sql"]
        try:
            if header is None:
                placeholder += 1
                width = 1 + max([sql["sel"]] + [c[0] for c in sql.get("conds", [])])
                cols = [f"col{i}" for i in range(width)]
            else:
                cols = list(header)
            answer = sql_to_text(sql, cols)
        except (KeyError, IndexError, TypeError) as e:
            raise TaskFormatError(f"malformed sql ({type(e).__name__}: {e})", path=str(p), line=n, task=name,
                                  field="sql") from None
        out.append(qa_instance(f"{name}-{n}", wikisql_context(rec["question"], cols), QUESTIONS["wikisql"],
                               [answer], header=cols, sql=sql, table_id=rec.get("table_id", "")))
    if placeholder:
        notes.append(f"{tables_path.name} not found: {placeholder} queries use placeholder column names "
                     f"col0, col1, ...; put the tables file beside {p.name} for real headers")
    return [_task("wikisql", name, out, p, notes=notes)]


def _is_wikisql(path: Path) -> bool:
    if path.suffix != ".jsonl" or path.name.endswith(".tables.jsonl"):
        return False
    rec = _first_jsonl_record(path)
    return rec is not None and "sql" in rec and "question" in rec


# --- MWSC --------------------------------------------------------------------------------------
_VARIANT = re.compile(r"\[.*?\]")


def _both_variants(text: str) -> list[str]:
    choices = [m[1:-1].split("/") for m in _VARIANT.findall(text)]
    pieces = _VARIANT.split(text)
    out = []
    for which in range(2):
        s = ""
        for i, piece in enumerate(pieces):
            s += piece
            if i < len(choices):
                s += choices[i][which]
        out.append(s)
    return out


def load_mwsc(path: str | Path) -> list[Task]:
    """decaNLP's Modified Winograd Schema `schema.txt`: blocks of (sentence with [a/b],
    question with [a/b], answer a/b); each block gives two examples. decaNLP's own split
    (train = first 80, validation = next, test = last 100) is kept in fields['split']."""
    p = Path(path)
    name = _task_name("schema", p)
    blocks, block, start = [], [], 0
    for n, raw in enumerate(_read_text(p).splitlines() + [""], start=1):
        if not raw.split():
            if block:
                blocks.append((start, block))
            block = []
            continue
        if not block:
            start = n
        block.append(raw.strip())
    examples = []
    for start, b in blocks:
        if len(b) != 3:
            raise TaskFormatError(f"schema block has {len(b)} lines, expected 3 (sentence, question, answers)",
                                  path=str(p), line=start, task=name)
        context, question, answer = b
        answers = answer.split("/")
        if len(answers) != 2:
            raise TaskFormatError("answer line must be 'choice1/choice2'", path=str(p), line=start + 2, task=name)
        contexts, questions = _both_variants(context), _both_variants(question)
        for k in range(2):
            examples.append((contexts[k], f"{questions[k]} {answers[0]} or {answers[1]}?", answers[k]))
    n_test = min(100, len(examples))
    out = []
    for i, (c, q, a) in enumerate(examples):
        split = "test" if i >= len(examples) - n_test else ("train" if i < 80 else "validation")
        out.append(qa_instance(f"{name}-{i}", c, q, [a], split=split))
    return [_task("schema", name, out, p)]


def _is_mwsc(path: Path) -> bool:
    if path.suffix != ".txt":
        return False
    lines = [ln for ln in _head(path, 2048).splitlines()[:4]]
    return len(lines) >= 3 and "[" in lines[0] and "/" in lines[0] and "/" in lines[2] and "\t" not in lines[0]


# --- companions: files that belong to another file's task ---------------------------------------
def companion_of(path: Path) -> str | None:
    """Why a file is covered by another one's task (for `tasks validate` listings), or None."""
    if path.suffix == ".story" and not _is_story_representative(path):
        return f"part of the CNN/DailyMail story set loaded with {_first_story_of(path)}"
    m = re.match(r"^(.*)\.(de|fr|ar|cs)(\.xml)?$", path.name)
    if m and path.with_name(f"{m.group(1)}.en{m.group(3) or ''}").exists():
        return f"IWSLT target side of {m.group(1)}.en{m.group(3) or ''}"
    if path.name.endswith(".tables.jsonl"):
        return f"WikiSQL tables for {path.name.replace('.tables', '')}"
    if path.suffix == ".txt" and path.name.startswith("url_list"):
        return "CNN/DailyMail URL list (the stories are read from the .story files)"
    return None


_FORMATS: list[tuple[str, Callable[[Path], bool], Callable[[Path], list[Task]], str]] = [
    ("decanlp_squad", _is_squad, load_squad, "SQuAD v1.1/v2.0 JSON as decaNLP QA"),
    ("decanlp_woz", _is_woz, load_woz, "WOZ 2.0 dialogue JSON (delta dialogue state)"),
    ("decanlp_nli", _is_nli, load_nli, "MultiNLI/SNLI JSONL"),
    ("decanlp_wikisql", _is_wikisql, load_wikisql, "WikiSQL JSONL (+ X.tables.jsonl)"),
    ("decanlp_sst", _is_sst, load_sst, "SST CSV label,sentence (binary or fine-grained)"),
    ("decanlp_cnn_dailymail", _is_story_representative, load_cnn_dailymail, "CNN/DailyMail .story directory"),
    ("decanlp_iwslt", _is_iwslt, load_iwslt, "IWSLT parallel text X.en + X.de"),
    ("decanlp_qasrl", _is_qasrl, load_qasrl, "QA-SRL wiki1.*.qa"),
    ("decanlp_qazre", _is_qazre, load_qazre, "QA-ZRE relation_splits TSV"),
    ("decanlp_mwsc", _is_mwsc, load_mwsc, "MWSC schema.txt"),
]
for _name, _detect, _load, _desc in _FORMATS:
    register_format(TaskFormat(_name, FAMILY, _detect, _load, _desc))
