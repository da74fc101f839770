"""Encoding specs: the names a task or a run may declare as its prompt format (`Task.encoding`,
`data.encoding`). A spec says which parts of a task a prompt shows and which template renders it;
`prompts/render.py` does the rendering. Kept with the tasks so a task file's encoding is checked
where the file is read (with its file and line).

A name is either a registered encoding (`qa`, `prefix`) or a Tk-Instruct spec of `+`-joined parts:
`def`, `posK`, `negK`, `expl`, `name` (e.g. `def+pos2`, the default; `def+pos2+neg2+expl`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigError
from ..registry import Registry

DEFAULT_ENCODING = "def+pos2"


@dataclass(frozen=True)
class Encoding:
    name: str
    template: str = "tk_instruct.jinja"
    add_task_name: bool = False
    add_definition: bool = True
    num_pos: int = 2
    num_neg: int = 0
    add_explanation: bool = False
    # Extra template variables drawn from the instance's structured fields (e.g. context/question).
    options: dict[str, Any] = field(default_factory=dict)


ENCODINGS: Registry[Encoding] = Registry("encoding")


def register_encoding(enc: Encoding) -> Encoding:
    return ENCODINGS.register(enc.name, enc, replace=True)


# Named encodings of the task families: decaNLP's question answering (fields context/question) and
# Text+Chem T5's task prefix.
register_encoding(Encoding(name="qa", template="decanlp_qa.jinja", add_definition=False, num_pos=0))
register_encoding(Encoding(name="prefix", template="prefix.jinja", add_definition=False, num_pos=0))


_PART = re.compile(r"^(def|expl|name|pos(\d+)|neg(\d+))$")


def parse_encoding(name: str) -> Encoding:
    if name in ENCODINGS:
        return ENCODINGS.get(name)
    enc = Encoding(name=name, add_definition=False, num_pos=0)
    for part in name.split("+"):
        m = _PART.match(part.strip())
        if not m:
            known = ", ".join(sorted(ENCODINGS.names()))
            raise ConfigError(
                f"unknown encoding {name!r}: part {part!r} is not one of def, posK, negK, expl, name"
                + (f" (named encodings: {known})" if known else ""))
        p = m.group(1)
        if p == "def":
            enc = replace(enc, add_definition=True)
        elif p == "expl":
            enc = replace(enc, add_explanation=True)
        elif p == "name":
            enc = replace(enc, add_task_name=True)
        elif p.startswith("pos"):
            enc = replace(enc, num_pos=int(m.group(2)))
        else:
            enc = replace(enc, num_neg=int(m.group(3)))
    return enc
