"""A registry of named specs, each declared by one module of a package and found on first use.

Backends (`accelerators.registry`) and ControlNet preprocessors (`pipelines.control_registry`) are
both kept this way: importing every module of the package once registers its spec, so adding one is
one new module. Finding them imports only those small declaration modules (no torch).
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Callable, Generic, Protocol, TypeVar


class Spec(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def order(self) -> int: ...


S = TypeVar("S", bound=Spec)


class Registry(Generic[S]):
    """kind: what a spec is called in messages; package: whose modules declare the specs; owner: the
    module a spec comes from (the same module registering again, e.g. reloaded, replaces its own)."""

    def __init__(self, kind: str, package: str, owner: Callable[[S], str]):
        self.kind, self.package, self.owner = kind, package, owner
        self.by_name: dict[str, S] = {}
        self._lock = threading.RLock()
        self._discovered = False

    def register(self, spec: S) -> S:
        """Add a spec; a second, different spec of the same name from another module is refused."""
        with self._lock:
            known = self.by_name.get(spec.name)
            if known is not None and known != spec and self.owner(known) != self.owner(spec):
                raise ValueError(f"{self.kind} {spec.name!r} is registered twice, by {self.owner(known)} and "
                                 f"{self.owner(spec)}")
            self.by_name[spec.name] = spec
        return spec

    def _discover(self) -> None:
        """Import every module of the package once (each registers its spec)."""
        if self._discovered:
            return
        with self._lock:
            if self._discovered:
                return
            package = importlib.import_module(self.package)
            for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                if not module.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{module.name}")
            self._discovered = True

    def specs(self) -> tuple[S, ...]:
        """Every spec, in `order` (then by name)."""
        self._discover()
        return tuple(sorted(self.by_name.values(), key=lambda s: (s.order, s.name)))

    def find(self, name: str) -> S | None:
        self._discover()
        return self.by_name.get(name) if isinstance(name, str) else None
