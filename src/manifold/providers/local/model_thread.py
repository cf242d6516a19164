"""What both in-process providers (the llama.cpp model and the embedding model) share: the model is loaded in
the background when the server starts (connections are accepted at once, requests wait for it), and every call
runs on one dedicated thread (serialized, off the event loop); a stream is an iterator run on that thread whose
items cross to the event loop through a queue.
"""

from __future__ import annotations

import abc
import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from manifold.config import DeploymentBase, LocalFilesDeployment
from manifold.errors import ServiceUnavailableError
from manifold.providers.base import Provider, of_kind

log = logging.getLogger("manifold.local")

M = TypeVar("M")
T = TypeVar("T")


def packaged_file(package: str, pattern: str, missing: str) -> Path:
    """The first file matching `pattern` inside the installed package `package`, found without importing it (an
    import may pull in unrelated code); `missing` is the 503's message when the package is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailableError(missing)
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob(pattern))
        if files:
            return files[0]
    raise ServiceUnavailableError(f"The {package.replace('_', '-')} package holds no {pattern} file.")


class ModelThreadProvider(Provider, Generic[M], abc.ABC):
    """A provider whose model `M` lives on one thread. Subclasses name the thread and say how the model file is
    found (`packaged_model`), checked (`prepare`), loaded (`load`) and closed (`closer`)."""

    kind: ClassVar[type[LocalFilesDeployment]]  # the deployment kind it serves
    thread_name: ClassVar[str]
    label: ClassVar[str]  # "local model": in the 503 of a model that was never started
    deployment: LocalFilesDeployment

    def __init__(self, deployment: LocalFilesDeployment) -> None:
        super().__init__(deployment)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
        self._loaded: M | None = None
        self._loading: asyncio.Future[M] | None = None

    @classmethod
    def check(cls, deployment: DeploymentBase) -> list[str]:
        deployment = of_kind(deployment, cls.kind)
        if deployment.model_path and not Path(deployment.model_path).is_file():
            return [f"model_path: {deployment.model_path!r} is not a file"]
        return []

    # -- what a subclass provides (all but `closer` run on the model's thread) -------------------------------------

    @abc.abstractmethod
    def packaged_model(self) -> Path:
        """The model file used when the deployment names no `model_path`."""

    def prepare(self, path: Path) -> None:
        """Checks before the load (its libraries importable, the file loadable); a ManifoldError when not."""

    @abc.abstractmethod
    def load(self, path: Path) -> M:
        """The model, loaded from `path` (on the model's thread)."""

    def closer(self, model: M) -> Callable[[], None] | None:
        """What releases the model on its thread at shutdown (None: nothing to release)."""
        return None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loading = asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> M:
        path = Path(self.deployment.model_path) if self.deployment.model_path else self.packaged_model()
        self.prepare(path)
        started = time.perf_counter()
        model = self.load(path)
        log.info("loaded %s in %.2f s", path.name, time.perf_counter() - started)
        self._loaded = model
        return model

    async def aclose(self) -> None:
        if self._loading is not None:
            try:
                await self._loading
            except Exception:  # noqa: BLE001 - a failed load has nothing to close
                log.debug("%s never loaded", self.label)
        model, self._loaded = self._loaded, None
        close = None if model is None else self.closer(model)
        if close is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)

    async def ready(self) -> bool:
        return self._loaded is not None

    async def model(self) -> M:
        """The loaded model, once loading is done (its error, if it failed)."""
        if self._loaded is not None:
            return self._loaded
        if self._loading is None:
            raise ServiceUnavailableError(f"The {self.label} was not started.")
        return await asyncio.shield(self._loading)

    # -- calls on the model's thread ----------------------------------------------------------------------------------

    async def on_thread(self, work: Callable[[], T], cancel: threading.Event | None = None) -> T:
        """`work()` on the model's thread. With `cancel`, a caller that leaves does not cancel the work (the thread
        is shared) but sets the flag, which the work reads to stop early."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, work)
        if cancel is None:
            return await future
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            raise

    async def stream_on_thread(
        self, items: Callable[[], Iterator[T]], cancel: threading.Event, error: Callable[[Exception], BaseException]
    ) -> AsyncIterator[T]:
        """The items of `items()`, iterated on the model's thread, on the event loop; an exception raised there is
        raised here as `error(exc)`. When the consumer stops early `cancel` is set, for the thread to notice."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def produce() -> None:
            try:
                for item in items():
                    loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except Exception as exc:  # noqa: BLE001 - handed to the event loop, re-raised there
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        future = loop.run_in_executor(self._executor, produce)
        try:
            while True:
                kind, item = await queue.get()
                if kind == "item":
                    yield item
                elif kind == "end":
                    return
                else:
                    raise error(item)
        finally:
            cancel.set()
            if not future.done():
                # Let the thread notice the flag; the executor stays serialized.
                future.add_done_callback(lambda f: f.exception())
