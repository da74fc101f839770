"""Declarative task and mixture definitions in small YAML files (tasks/*.yaml).

A task file declares one task, or a group under `tasks:` whose entries inherit the file's
top-level keys; `include:` pulls defaults from a parent file (child keys win). Every key is
checked: an unknown or mistyped key is an error naming the file and line (from yaml's node
marks). Source paths are resolved against the YAML's directory and may not leave its data
root (the YAML's own directory, or an ancestor named by `data_root:`) unless
`allow_absolute: true`.

    family: decanlp
    encoding: qa
    tasks:
      - name: decanlp_sst
        source: decanlp/sst_train.csv        # path or glob; or `datasets: {path, name, split}`
        format: decanlp_sst                  # optional: a registered TaskFormat; else detected
        metrics: [em]

Mixture files (`mixture:` key) name the task files to load and the mixing rates:

    mixture: four_families
    sources: [../sample, ../families/decanlp.yaml]
    rate: examples_proportional              # or give per-entry `rate:` numbers
    cap: 50
    temperature: 2.0
    entries: ["task*", {pattern: "decanlp_*", rate: 1.0}]

Modules, one job each: `marked` (YAML with line marks), `schema` (the spec dataclasses; TaskSpec's
fields are the allowed task keys), `validate`, `load`, `mixture`, `formats`.
"""

from __future__ import annotations

from .formats import MIXTURE_YAML_FORMAT, TASK_YAML_FORMAT, is_mixture_yaml, is_task_yaml
from .load import FAMILY_GENERIC, load_spec, load_task_yaml, records_to_task, resolve_sources
from .marked import Marked, read_yaml
from .mixture import load_mixture_tasks, load_mixture_yaml
from .schema import DatasetSource, MixtureSpec, TaskSpec
from .validate import Collector, SpecProblems, parse_task_yaml

__all__ = ["Collector", "DatasetSource", "FAMILY_GENERIC", "MIXTURE_YAML_FORMAT", "Marked", "MixtureSpec",
           "SpecProblems", "TASK_YAML_FORMAT", "TaskSpec", "is_mixture_yaml", "is_task_yaml", "load_mixture_tasks",
           "load_mixture_yaml", "load_spec", "load_task_yaml", "parse_task_yaml", "read_yaml", "records_to_task",
           "resolve_sources"]
