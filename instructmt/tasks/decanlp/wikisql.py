"""decaNLP source: WikiSQL."""

from __future__ import annotations

from pathlib import Path

from ...errors import TaskFormatError
from ..registry import TaskFormat
from ..schema import Task
from ..textio import iter_jsonl
from .common import FAMILY, QUESTIONS, first_jsonl_record, make_task, qa_instance, task_name


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
    name = task_name("wikisql", p)
    tables_path = _tables_for(p)
    tables = {}
    if tables_path.exists():
        tables = {rec["id"]: rec for _, rec in iter_jsonl(tables_path) if "id" in rec}
    notes = []
    out = []
    placeholder = 0
    for n, rec in iter_jsonl(p):
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
    return [make_task("wikisql", name, out, p, notes=notes)]


def _is_wikisql(path: Path) -> bool:
    if path.suffix != ".jsonl" or path.name.endswith(".tables.jsonl"):
        return False
    rec = first_jsonl_record(path)
    return rec is not None and "sql" in rec and "question" in rec


def tables_companion(path: Path) -> str | None:
    if path.name.endswith(".tables.jsonl"):
        return f"WikiSQL tables for {path.name.replace('.tables', '')}"
    return None


FORMAT = TaskFormat("decanlp_wikisql", FAMILY, _is_wikisql, load_wikisql, "WikiSQL JSONL (+ X.tables.jsonl)",
                    companion=tables_companion)
