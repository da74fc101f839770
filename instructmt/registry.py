"""A small named registry: rejects duplicates and suggests near names on a miss.

Built-in entries are lazy (lm-eval's habit): `builtins` maps a name to `"module:object"` or to a bare
`"module"`. The name is known at once (for `in`, listings and suggestions); the module is imported on
first use. With `:object`, the registry registers `make(object)` itself; a bare module registers its
entries on import (a family that builds several in a loop).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from .errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: Mapping[str, str] | None = None,
                 make: Callable[[Any], T] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._builtins = dict(builtins or {})
        self._make = make or (lambda obj: obj)

    def register(self, name: str, item: T, *, replace: bool = False) -> T:
        if name in self._items and not replace:
            raise RegistryError(f"duplicate {self.kind} name {name!r}: already registered")
        self._items[name] = item
        return item

    def _load(self, name: str) -> None:
        module, _, obj = self._builtins[name].partition(":")
        mod = importlib.import_module(module)
        if name not in self._items:
            if not obj:
                raise RegistryError(f"built-in {self.kind} {name!r}: importing {module} did not register it")
            self._items[name] = self._make(getattr(mod, obj))

    def load_all(self) -> None:
        """Import every built-in entry not loaded yet (before iterating over the items)."""
        for name in self._builtins:
            if name not in self._items:
                self._load(name)

    def get(self, name: str) -> T:
        if name not in self._items and name in self._builtins:
            self._load(name)
        try:
            return self._items[name]
        except KeyError:
            names = self.names()
            near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
            known = "" if near else f" (known: {', '.join(sorted(names)) or 'none'})"
            raise RegistryError(f"unknown {self.kind} {name!r}{hint}{known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._builtins

    def names(self) -> list[str]:
        """Built-ins in their declared order, then what was registered at run time."""
        return list(self._builtins) + [n for n in self._items if n not in self._builtins]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self):
        self.load_all()
        return [(n, self._items[n]) for n in self.names()]

    def values(self):
        return [item for _, item in self.items()]
