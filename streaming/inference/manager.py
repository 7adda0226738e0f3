"""The models a worker serves, changed between two batches without a stop.

:meth:`ModelManager.refresh` reads the registry's pointers; a new active or
shadow version is loaded and warmed off the event loop, checked against the
pipeline's inputs, and only then swapped in. A version that cannot be loaded
(missing, corrupt, incompatible, or any error from ONNX Runtime while loading
or warming it) is refused with one logged error line and counted
(``on_refused``); the current one keeps serving. A refused version is not
tried again until its files change.

At start, an active version that will not load is refused the same way and
the worker starts on the last good one instead (:meth:`ModelRegistry.last_good`:
the versions active before it, then the others, newest first), without
rewriting ``active.json``; only when no version loads does the start fail. A
shadow that will not load at start is refused and the worker runs without one.
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
        self._refused: set[tuple[str, str]] = set()  # (role, version stamp) refused and unchanged since
        self.active: OnnxModel = self._start_active()
        self.shadow: OnnxModel | None = self._start_shadow()

    def _start_active(self) -> OnnxModel:
        """The active version, or the last good one when it will not load (:class:`ModelError` if none loads)."""
        want = self.registry.active_name()
        failed: list[tuple[str, str]] = []
        for version in [want, *self.registry.last_good(want)]:
            stamp = self._stamp(version)
            try:
                model = self.load(version)
            except Exception as exc:  # anything ONNX Runtime raises while loading or warming is a refusal
                failed.append((version, self._refuse("active", version, stamp, exc, start=True)))
                continue
            if failed:
                log.warning("model %s: starting on %s instead of %s (refused: %s); active.json is left as it is",
                            model.name, version, want, failed[0][1])
            return model
        tried = "; ".join(f"{v}: {reason}" for v, reason in failed)
        raise ModelError(f"no version of model {self.registry.name} loads ({tried})")

    def _start_shadow(self) -> OnnxModel | None:
        """The shadow version, or None when there is none or it will not load."""
        version = self.registry.pointers()[1]
        if version is None:
            return None
        stamp = self._stamp(version)
        try:
            return self.load(version)
        except Exception as exc:  # as for the active one: refused, and the worker runs without a shadow
            self._refuse("shadow", version, stamp, exc, start=True)
            return None

    def load(self, version: str) -> OnnxModel:
        """Load and warm ``version`` and check it against the pipeline's inputs (raises on any failure)."""
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
        except (ModelError, OSError) as exc:
            log.error("cannot read the model pointers: %s", exc)
            return False
        changed = False
        if want_active is not None and want_active != self.active.tag:
            new: OnnxModel | None
            if self.shadow is not None and self.shadow.tag == want_active:
                new = self.shadow  # promoted from shadow: loaded and warmed already, the swap is immediate
            else:
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
                shadow = await self._try_load("shadow", want_shadow, executor)
                if shadow is not None:
                    old_shadow, self.shadow = self.shadow, shadow
                    self.on_change("shadow", old_shadow, shadow)
                    log.warning("scoring %s %s in shadow", shadow.name, shadow.tag)
                    changed = True
        return changed

    def _stamp(self, version: str) -> str:
        """``version`` and the modification times of its files: a refused version is tried again once they change."""
        times = []
        for name in ("model.onnx", "metadata.json", "signature.json", "reference.json"):
            try:
                times.append(str((self.registry.dir / version / name).stat().st_mtime_ns))
            except (OSError, ValueError):  # ValueError: a name the file system cannot hold
                times.append("missing")
        return f"{version}@{'/'.join(times)}"

    def _refuse(self, role: str, version: str, stamp: str, exc: Exception, *, start: bool = False) -> str:
        """Log, remember and count a refused version; returns the reason (one line)."""
        reason = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
        reason = " ".join(reason.split())  # ONNX Runtime's messages can span lines
        self._refused.add((role, stamp))
        if start:
            log.error("refusing %s model %s at start: %s", role, version, reason)
        else:
            log.error("refusing %s model %s: %s; the current one keeps serving", role, version, reason)
        self.on_refused(role, version, reason)
        return reason

    async def _try_load(self, role: str, version: str, executor: Executor | None) -> OnnxModel | None:
        stamp = self._stamp(version)
        if (role, stamp) in self._refused:
            return None  # refused before and unchanged since: say it once, not every second
        try:
            return await self._load_off_loop(version, executor)
        except Exception as exc:  # anything ONNX Runtime raises while loading or warming is a refusal
            self._refuse(role, version, stamp, exc)
            return None
