"""Explicit name -> implementation registries, so YAML names and code cannot drift apart.

`BACKENDS` and `SAMPLERS` live here, in a module that imports nothing else of textdiff: a registry made with a
`package` imports that package on its first lookup, and the package's modules register themselves (plug-in
discovery). So config.py can validate `backend.name` and `sample.sampler` without importing the implementations.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping


class Registry(Mapping):
    """A read-only mapping filled by `@REGISTRY.register("name")`; the decorated object also gets `.name`."""

    def __init__(self, kind: str, package: str | None = None):
        self.kind, self._package, self._items = kind, package, {}

    def _discover(self) -> None:
        if self._package is not None:
            package, self._package = self._package, None  # once, and never again from inside the import
            importlib.import_module(package)

    def register(self, name: str):
        def wrap(obj):
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            obj.name = name
            return obj
        return wrap

    def unregister(self, name: str) -> None:
        """Remove `name` (a test's throwaway registration)."""
        self._items.pop(name, None)

    def __getitem__(self, name: str):
        self._discover()
        return self._items[name]

    def __iter__(self):
        self._discover()
        return iter(self._items)

    def __len__(self) -> int:
        self._discover()
        return len(self._items)


BACKENDS = Registry("back-end", "textdiff.noising")
"""Noising back-ends by the name a recipe's `backend.name` uses (textdiff/noising/<name>.py)."""
SAMPLERS = Registry("sampler", "textdiff.sampling")
"""Samplers by the name `sample.sampler` / `--sampler` uses (textdiff/sampling/)."""
