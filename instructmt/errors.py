"""Errors users see. Each names the file, task and field so a bad input is found at once."""

from __future__ import annotations


class InstructMTError(Exception):
    """Base class: the CLI prints these as one clear line, without a traceback."""


class TaskFormatError(InstructMTError):
    """A task file or record is malformed."""

    def __init__(self, message: str, *, path: str | None = None, task: str | None = None,
                 field: str | None = None, line: int | None = None):
        self.path, self.task, self.field, self.line = path, task, field, line
        where = []
        if path:
            where.append(f"file {path}" + (f" line {line}" if line else ""))
        if task:
            where.append(f"task {task!r}")
        if field:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class RegistryError(InstructMTError, KeyError):
    """Unknown or duplicate name in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SplitOverlapError(InstructMTError):
    """A task is both seen (trained on) and held out."""


class ConfigError(InstructMTError):
    """A configuration value is invalid."""


class PublishError(InstructMTError):
    """The run cannot be published as it is, or the Hub refused a step."""
