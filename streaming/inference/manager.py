"""The models a worker serves, changed between two batches without a stop.

:meth:`ModelManager.refresh` reads the registry's pointers; a new active or
shadow version is loaded and warmed off the event loop, checked against the
pipeline's inputs, and only then swapped in. A version that cannot be loaded
(missing, corrupt, incompatible) is refused with a logged error and counted;
the current one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from streaming.errors import ModelError
from streaming.inference.registry import ModelRegistry
from streaming.inference.session import OnnxModel

__all__ = ["ModelManager"]

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(
        self,
        registry: ModelRegistry,
        inputs: Sequence[str],
        *,
        provider: str = "auto",
        threads: int = 1,
        buckets: Sequence[int] | None = None,
        on_change: Callable[[str, OnnxModel | None, OnnxModel | None], None] = lambda *_: None,
        on_refused: Callable[[str, str, str], None] = lambda *_: None,
    ) -> None:
        self.registry = registry
        self.inputs = list(inputs)
        self.provider = provider
        self.threads = threads
        self.buckets = None if buckets is None else tuple(buckets)
        self.on_change = on_change  # (role, old, new)
        self.on_refused = on_refused  # (role, version, reason)
        self.active: OnnxModel = self.load(registry.active().version)
        shadow = registry.shadow()
        self.shadow: OnnxModel | None = None if shadow is None else self.load(shadow.version)
        self._refused: set[tuple[str, str]] = set()

    def load(self, version: str) -> OnnxModel:
        model = OnnxModel(self.registry.get(version), provider=self.provider, threads=self.threads,
                          buckets=self.buckets)
        if model.version.inputs != self.inputs:
            raise ModelError(
                f"model {model.name} {model.tag} expects inputs {model.version.inputs} but the pipeline declares "
                f"{self.inputs}: retrain with `streaming train`"
            )
        return model

    async def _load_off_loop(self, version: str, executor: Executor | None) -> OnnxModel:
        return await asyncio.get_running_loop().run_in_executor(executor, self.load, version)

    async def refresh(self, executor: Executor | None = None) -> bool:
        """Apply the registry's pointers; True when a model changed."""
        try:
            want_active, want_shadow = self.registry.pointers()
        except ModelError as exc:
            log.error("cannot read the model pointers: %s", exc)
            return False
        changed = False
        if want_active is not None and want_active != self.active.tag:
            new = await self._try_load("active", want_active, executor)
            if new is not None:
                old, self.active = self.active, new
                self.on_change("active", old, new)
                log.warning("now serving %s %s (was %s)", new.name, new.tag, old.tag)
                changed = True
        current_shadow = None if self.shadow is None else self.shadow.tag
        if want_shadow != current_shadow:
            if want_shadow is None:
                old_shadow, self.shadow = self.shadow, None
                self.on_change("shadow", old_shadow, None)
                changed = True
            else:
                new = await self._try_load("shadow", want_shadow, executor)
                if new is not None:
                    old_shadow, self.shadow = self.shadow, new
                    self.on_change("shadow", old_shadow, new)
                    log.warning("scoring %s %s in shadow", new.name, new.tag)
                    changed = True
        return changed

    def _stamp(self, version: str) -> str:
        try:
            return f"{version}@{(self.registry.dir / version / 'model.onnx').stat().st_mtime_ns}"
        except OSError:
            return f"{version}@missing"

    async def _try_load(self, role: str, version: str, executor: Executor | None) -> OnnxModel | None:
        stamp = self._stamp(version)
        if (role, stamp) in self._refused:
            return None  # refused before and unchanged since: say it once, not every second
        try:
            return await self._load_off_loop(version, executor)
        except ModelError as exc:
            self._refused.add((role, stamp))
            log.error("refusing %s model %s: %s; the current one keeps serving", role, version, exc)
            self.on_refused(role, version, str(exc))
            return None
