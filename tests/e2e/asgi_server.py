"""Serve an ASGI app built in the test (an `OpenAIFrontend`, a FastAPI app mounting one) on a real socket.

uvicorn runs in a background thread with its own event loop, on 127.0.0.1 and a free port, with lifespan
events, as `manifold serve` runs it; the test talks to it with the official SDK from the main thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from tests.e2e.conftest import free_port


class ServedApp:
    def __init__(self, url: str, thread: threading.Thread) -> None:
        self.url = url
        self.thread = thread  # the thread whose event loop serves the app

    @property
    def loop_thread_id(self) -> int | None:
        return self.thread.ident


@contextlib.contextmanager
def serve(app: Any, lifespan: str = "on") -> Iterator[ServedApp]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan, loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield ServedApp(f"http://127.0.0.1:{port}", thread)
    finally:
        server.should_exit = True
        thread.join(15)
