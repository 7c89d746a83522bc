"""The models a service answers with: each name's champion, followed while the service runs.

A :class:`Champions` reads the registry's champion pointers every ``refresh_seconds`` and
loads a newly promoted version beside the one being served; the swap is one assignment of an
immutable mapping, so a request that took its :class:`Served` before the swap finishes on
that version, and every later request gets the new one. A version that cannot be loaded
(a corrupt file, the object store down) leaves the previous one in service and is reported
by ``/readyz``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from kmflow.core.model import Model
from kmflow.errors import KmflowError, ModelNotFoundError
from kmflow.storage.registry import ModelRegistry

__all__ = ["Champions", "Served"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One model version in service, as a request sees it from start to end."""

    model: Model
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.model.record.name

    @property
    def version(self) -> int:
        return self.model.record.version


class Champions:
    """The champion of every served model name, refreshed from the registry.

    Parameters
    ----------
    registry : ModelRegistry
    names : sequence of str, optional
        The names to serve; None serves every name in the registry (names added later are
        picked up at the next refresh).
    """

    def __init__(self, registry: ModelRegistry, names: Sequence[str] | None = None) -> None:
        self.registry = registry
        self.names = tuple(names) if names else None
        self._served: Mapping[str, Served] = MappingProxyType({})
        self._problems: Mapping[str, str] = MappingProxyType({})
        self._lock = threading.Lock()
        self.refreshed_at: float | None = None

    def get(self, name: str) -> Served | None:
        """The version of `name` in service now, or None."""
        return self._served.get(name)

    @property
    def served(self) -> Mapping[str, Served]:
        """Every name in service and its version (a snapshot)."""
        return self._served

    @property
    def problems(self) -> Mapping[str, str]:
        """Why a name is not served (or not at its champion), from the last refresh."""
        return self._problems

    def refresh(self) -> list[str]:
        """Read every champion pointer again and load the versions that changed.

        Returns
        -------
        list of str
            The names whose served version changed.
        """
        with self._lock:
            changed: list[str] = []
            problems: dict[str, str] = {}
            served = dict(self._served)
            try:
                names = list(self.names) if self.names else self.registry.names()
            except KmflowError as exc:
                problems["*"] = f"the registry could not be listed: {exc}"
                self._problems = MappingProxyType(problems)
                return changed
            for name in names:
                try:
                    record = self.registry.champion(name)
                except ModelNotFoundError as exc:
                    served.pop(name, None)
                    problems[name] = str(exc)
                    continue
                except KmflowError as exc:
                    problems[name] = f"the champion pointer could not be read: {exc}"
                    continue
                if record is None:
                    problems[name] = (
                        f"model {name!r} has no champion yet: promote a version "
                        f"(kmflow models promote {name} N)"
                    )
                    continue
                current = served.get(name)
                if current is not None and current.version == record.version:
                    continue
                try:
                    model = self.registry.load(name, record.version)
                except KmflowError as exc:
                    problems[name] = f"champion v{record.version} could not be loaded: {exc}"
                    logger.warning("%s: champion v%d not loaded: %s", name, record.version, exc)
                    continue
                served[name] = Served(model)
                changed.append(name)
                logger.info(
                    "serving %s v%d%s",
                    name,
                    record.version,
                    "" if current is None else f" (was v{current.version})",
                )
            if self.names is None:
                for gone in set(served) - set(names):
                    del served[gone]
                    changed.append(gone)
            self._served = MappingProxyType(served)
            self._problems = MappingProxyType(problems)
            self.refreshed_at = time.time()
            return changed
