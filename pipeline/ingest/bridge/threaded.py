"""Run a bridge on its own event loop in a background thread (tests, benchmarks, embedding)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator

from pipeline.ingest.bridge.server import Bridge, serve


@contextlib.contextmanager
def bridge_thread(
    bridge: Bridge, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> Iterator[str]:  # fmt: skip
    """Yields the base URL (``http://127.0.0.1:PORT``); on exit shuts the bridge down gracefully."""
    started = threading.Event()
    box: dict = {}

    def main() -> None:
        async def go() -> None:
            box["loop"] = asyncio.get_running_loop()
            box["stop"] = asyncio.Event()

            def on_start(p: int) -> None:
                box["port"] = p
                started.set()

            await serve(bridge, host, port, ssl_context, stop=box["stop"], started=on_start, shutdown_timeout=10)

        try:
            asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001 - surfaced to the caller below
            box["error"] = exc
            started.set()

    t = threading.Thread(target=main, name="bridge", daemon=True)
    t.start()
    if not started.wait(timeout) or "error" in box:
        raise RuntimeError(f"bridge did not start: {box.get('error')}")
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://{host}:{box['port']}"
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        t.join(timeout)
