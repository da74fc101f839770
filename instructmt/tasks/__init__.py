"""Tasks: schema, registry, and one loader module per family."""

from .schema import Example, Instance, Task
from .registry import FORMATS, TaskFormat, TaskRegistry, detect_format, load_path, register_format

__all__ = ["Example", "Instance", "Task", "TaskRegistry", "TaskFormat", "FORMATS",
           "register_format", "detect_format", "load_path"]
