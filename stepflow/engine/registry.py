"""The functions an engine knows: the active definitions (for matching events) and every stored version
(runs keep the version they started with, even after the definition changes)."""

from __future__ import annotations

import logging
from typing import Any

from stepflow.definitions import FunctionDef, parse_function
from stepflow.errors import DefinitionError, ExpressionError, NotFoundError
from stepflow.ids import now_ms
from stepflow.store.base import Store

log = logging.getLogger("stepflow.engine")


class FunctionRegistry:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._active: dict[str, tuple[int, FunctionDef]] = {}
        self._versions: dict[tuple[str, int], FunctionDef] = {}

    async def register(self, fn: FunctionDef, *, allow_app_change: bool = False) -> int:
        """Store the definition (a new version if it changed) and make it active.

        Function ids are global: an id already active in another app is refused, rather than silently
        taking over that app's events.
        """
        current = self._active.get(fn.id)
        if current is not None and current[1].app_id != fn.app_id and not allow_app_change:
            raise DefinitionError(f"the id is already used by app {current[1].app_id!r} "
                                  f"({current[1].source}); function ids must be unique across apps",
                                  source=fn.source, function=fn.id)
        version = await self._store.save_function(fn.id, fn.app_id, fn.to_config(), now_ms())
        self._active[fn.id] = (version, fn)
        self._versions[(fn.id, version)] = fn
        return version

    async def load_active(self) -> None:
        """Read the active definitions from the store (for processes that did not register them)."""
        active: dict[str, tuple[int, FunctionDef]] = {}
        for version, config in await self._store.list_functions():
            fn = self._versions.get((config["id"], version)) or parse_function(config, source="store")
            self._versions[(fn.id, version)] = fn
            active[fn.id] = (version, fn)
        self._active = active

    async def deactivate(self, function_id: str) -> None:
        """No new runs for this function; its running runs finish with the version they have."""
        await self._store.remove_function(function_id)
        self._active.pop(function_id, None)

    async def deactivate_app(self, app_id: str, keep: set[str]) -> list[str]:
        """Forget the functions of `app_id` not in `keep` (an app synced without them). Their runs go on."""
        removed = [fid for fid, (_, fn) in self._active.items() if fn.app_id == app_id and fid not in keep]
        for fid in removed:
            await self._store.remove_function(fid)
            del self._active[fid]
        return removed

    def active(self) -> list[tuple[int, FunctionDef]]:
        return list(self._active.values())

    def get_active(self, function_id: str) -> tuple[int, FunctionDef] | None:
        return self._active.get(function_id)

    async def get(self, function_id: str, version: int) -> FunctionDef:
        fn = self._versions.get((function_id, version))
        if fn is not None:
            return fn
        found = await self._store.get_function(function_id, version)
        if found is None:
            raise NotFoundError(f"function {function_id!r} version {version} is not stored")
        fn = parse_function(found[1], source="store")
        self._versions[(function_id, version)] = fn
        return fn

    def matching(self, name: str, event: dict[str, Any]) -> list[tuple[int, FunctionDef]]:
        """Functions triggered by this event.

        A trigger filter that fails to evaluate (e.g. it reads a field this event lacks) does not match; the
        failure is logged with the function id so it is never silent, and other functions still run.
        """
        out: list[tuple[int, FunctionDef]] = []
        for version, fn in self._active.values():
            try:
                if fn.matches(name, event):
                    out.append((version, fn))
            except ExpressionError as exc:
                log.warning("function %r: trigger filter failed on event %r (%s): %s",
                            fn.id, name, event.get("id"), exc.message)
        return out
