"""Explicit name -> implementation registries, so YAML names and code cannot drift apart."""

from __future__ import annotations


class Registry(dict):
    """A dict filled by `@REGISTRY.register("name")`; the decorated object also gets `.name`."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str):
        def wrap(obj):
            if name in self:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self[name] = obj
            obj.name = name
            return obj
        return wrap
