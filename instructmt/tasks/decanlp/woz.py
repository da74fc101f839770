"""decaNLP source: WOZ 2.0."""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import TaskFormatError
from ..registry import TaskFormat
from ..schema import Task
from ..textio import read_json
from .common import FAMILY, QUESTIONS, json_head_has, make_task, qa_instance, task_name


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
    data = read_json(p)
    if not isinstance(data, list):
        raise TaskFormatError("expected a list of dialogues", path=str(p))
    m = re.search(r"_(en|de|it)\.json$", p.name)
    lang = m.group(1) if m else "en"
    name = task_name("woz", p)
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
    return [make_task("woz.en", name, out, p, language=lang)]


def _is_woz(path: Path) -> bool:
    return json_head_has(path, 8192, '"dialogue"', '"belief_state"', '"transcript"')


FORMAT = TaskFormat("decanlp_woz", FAMILY, _is_woz, load_woz, "WOZ 2.0 dialogue JSON (delta dialogue state)")
