"""The Jinja environment over the project's prompts/ directory: one place that finds the templates,
so the prompt renderer and a task family that builds its input from a template read the same file."""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

import jinja2


def _find_prompts_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "prompts"
        if (cand / "tk_instruct.jinja").exists():
            return cand
    raise FileNotFoundError("prompts/ directory with tk_instruct.jinja not found")


PROMPTS_DIR = _find_prompts_dir()


def endpunct(text: str) -> str:
    """Append "." unless the text already ends in punctuation (the Tk-Instruct rule)."""
    return text if text and text[-1] in string.punctuation else text + "."


@lru_cache(maxsize=None)
def _environment(prompts_dir: str) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(prompts_dir), keep_trailing_newline=False,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["endpunct"] = endpunct
    return env


def get_template(name: str, prompts_dir: str | Path | None = None) -> jinja2.Template:
    return _environment(str(prompts_dir or PROMPTS_DIR)).get_template(name)
