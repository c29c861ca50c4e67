"""A configuration file re-read when it changes: its mtime is checked every second (off the event loop) and
SIGHUP forces a re-read; a version that fails to parse keeps the previous one and says so once in the log.
Shared by the bridge's tokens file and the API's readers file."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

log = logging.getLogger("kaudit.watch")


class WatchedFile:
    """Subclasses give ``watched_path`` and ``apply_file(data, source)`` (parse and install; raise ValueError
    on a bad file); they get ``load`` (startup: errors surface), ``reload`` (errors keep the old state),
    ``start``/``stop`` (watch from a running loop)."""

    watched_what = "file"
    _mtime: float | None = None
    _task: asyncio.Task | None = None

    @property
    def watched_path(self) -> Path | None:
        raise NotImplementedError

    def apply_file(self, data: bytes, source: str) -> None:
        raise NotImplementedError

    def load(self) -> None:
        """(Re)read the file. Raises ValueError (or the subclass's error) when it cannot be used."""
        path = self.watched_path
        if path is None:
            return
        try:
            st = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            raise self.file_error(f"{path}: {exc.strerror}") from None
        self.apply_file(data, str(path))
        self._mtime = st.st_mtime

    def file_error(self, message: str) -> ValueError:
        return ValueError(message)

    def reload(self, *, only_if_changed: bool = False) -> bool:
        """Reload, keeping the previous state on errors. Returns True when it was replaced."""
        path = self.watched_path
        if path is None:
            return False
        try:
            mtime = path.stat().st_mtime
            if only_if_changed and mtime == self._mtime:
                return False
            self._mtime = mtime  # a broken version is reported once, not every second
            self.load()
            return True
        except (ValueError, OSError) as exc:
            log.error("%s: keeping the previous version: %s", self.watched_what, exc)
            return False

    async def start(self, interval: float = 1.0) -> None:
        """Watch the file (mtime, every ``interval`` s, in a thread) and reload on SIGHUP (main thread only)."""
        if self.watched_path is None or self._task is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, self.reload))
        except (RuntimeError, ValueError):  # not the main thread (tests, the sink's API thread): polling still works
            pass

        async def watch() -> None:
            while True:
                await asyncio.sleep(interval)
                await loop.run_in_executor(None, lambda: self.reload(only_if_changed=True))

        self._task = asyncio.create_task(watch())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            self._task = None
