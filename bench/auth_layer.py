"""The authentication layer's own CPU per request, in process (docs/access.md): the layer around an app that
does nothing, called the way the server calls it, with no key required, the master key, and a cached virtual
key. Prints microseconds per request; asserts nothing.

    python bench/auth_layer.py [--requests 200000]

The end-to-end figure (the whole server) is `bench/overhead.py --auth none|master|virtual`; on a shared machine
its noise is larger than this layer's cost, hence this one.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from typing import Any

from manifold.access.auth import Authenticator, AuthLayer
from manifold.access.keys import KeyCreate
from manifold.config import AuthSettings, StorageSettings
from manifold.storage import Store

MASTER = "sk-bench-master-0123456789abcdef"


async def inner(scope: Any, receive: Any, send: Any) -> None:
    return None


def scope_with(key: str | None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"user-agent", b"OpenAI/Python")]
    if key is not None:
        headers.append((b"authorization", b"Bearer " + key.encode()))
    return {"type": "http", "path": "/v1/chat/completions", "method": "POST", "headers": headers}


async def measure(layer: AuthLayer, scope: dict[str, Any], n: int) -> float:
    for _ in range(1000):
        await layer(scope, None, None)
    started = time.process_time()
    for _ in range(n):
        await layer(scope, None, None)
    return (time.process_time() - started) / n * 1e6


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(StorageSettings(data_dir=tmp))
        from manifold.access.admin import Admin

        async def notify(_: str) -> None:
            return None

        created = await Admin(await store.access(), notify, 0).create_key(KeyCreate())
        off = Authenticator(AuthSettings(), Store(StorageSettings(data_dir=tmp + "/none")))
        master = Authenticator(AuthSettings(master_key=MASTER), store)
        for auth in (off, master):
            auth.start()
        await asyncio.sleep(0.5)
        off.keys_exist = False
        rows = [
            ("no key required", await measure(AuthLayer(inner, off, ["/health"]), scope_with(None), n)),
            ("master key", await measure(AuthLayer(inner, master, ["/health"]), scope_with(MASTER), n)),
            (
                "virtual key (cached)",
                await measure(AuthLayer(inner, master, ["/health"]), scope_with(created["key"]), n),
            ),
        ]
        for auth in (off, master):
            await auth.aclose()
        await store.aclose()
    print("| authentication | CPU µs per request |\n|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200_000)
    asyncio.run(main(p.parse_args().requests))
