"""The Task contract every family loader returns; nothing downstream knows the family otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """A demonstration (positive or negative) shown in the prompt."""

    input: str
    output: str
    explanation: str = ""
    # Where a retrieved demonstration came from (instance id), recorded in predictions.
    id: str = ""


@dataclass
class Instance:
    """One evaluation/training item. `outputs` holds every acceptable reference."""

    id: str
    input: str
    outputs: list[str]
    # Family-specific structured fields (e.g. decaNLP context/question), used by encodings.
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    name: str
    family: str
    definition: str
    instances: list[Instance]
    positive_examples: list[Example] = field(default_factory=list)
    negative_examples: list[Example] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=lambda: ["English"])
    # Metric names (see instructmt.evaluation.metrics); the first is the headline.
    metrics: list[str] = field(default_factory=lambda: ["exact_match", "rougeL"])
    # Preferred encoding for this task, or None for the run's default.
    encoding: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def category_key(self) -> str:
        """Per-category key exactly as the official SNI script builds it."""
        if not self.categories:
            return "uncategorized"
        return "_".join(self.categories[0].lower().split())

    def __repr__(self) -> str:  # tasks can hold thousands of instances
        return (f"Task(name={self.name!r}, family={self.family!r}, "
                f"instances={len(self.instances)}, categories={self.categories})")
