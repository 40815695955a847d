"""Modules whose code runs only when one of their names is first used.

importlib's LazyLoader loads a module on any attribute access, ``__spec__`` included, which
the import system reads at once; here only a name the module does not have yet (one its code
would define) loads it.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any


class _Deferred(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        spec = self.__spec__
        assert spec is not None and spec.loader is not None
        module: types.ModuleType = self
        # A plain module again first: the module's own code must not recurse into here.
        module.__class__ = types.ModuleType
        spec.loader.exec_module(module)
        return getattr(module, name)


def defer(name: str) -> None:
    """Make ``import name`` cheap: the module's code runs when a name in it is first used."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _Deferred
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def unblock(name: str) -> None:
    """A module blocked at start (``sys.modules[name] = None``) becomes importable again, as
    a deferred one: a library that only imports it pays nothing until it uses it."""
    if name in sys.modules and sys.modules[name] is None:
        del sys.modules[name]
        defer(name)
