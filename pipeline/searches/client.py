"""Where the `kaudit search` / `kaudit alert` commands reach the saved searches: the warehouse itself (a server
DSN, or an embedded path nobody holds), or the owner's query API when a running sink holds the embedded path."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from typing import Any

from pipeline.config import Settings
from pipeline.query.execute import _http
from pipeline.searches.store import SavedSearch, SearchError, Store
from pipeline.warehouse.client import WarehouseLockedError, is_embedded


class HttpStore:
    """The Store methods over the query API (POST/GET/DELETE /api/searches)."""

    def __init__(self, s: Settings) -> None:
        self.s = s

    def list(self, owner: str | None = None, alerts_only: bool = False) -> list[SavedSearch]:
        qs = urllib.parse.urlencode({k: v for k, v in {"owner": owner, "alerts": "1" if alerts_only else ""}.items() if v})
        return [SavedSearch.from_json(d) for d in _http(self.s, "GET", f"/api/searches?{qs}")["searches"]]

    def get(self, name: str) -> SavedSearch | None:
        from pipeline.query.execute import ExecError

        try:
            return SavedSearch.from_json(_http(self.s, "GET", f"/api/searches/{urllib.parse.quote(name, safe='')}"))
        except ExecError as exc:
            if "no saved search" in str(exc):
                return None
            raise

    def save(self, ss: SavedSearch) -> SavedSearch:
        from pipeline.query.execute import ExecError

        try:
            return SavedSearch.from_json(_http(self.s, "POST", "/api/searches", ss.as_json()))
        except ExecError as exc:
            raise SearchError(str(exc), exc.column) from None

    def delete(self, name: str) -> bool:
        from pipeline.query.execute import ExecError

        try:
            _http(self.s, "DELETE", f"/api/searches/{urllib.parse.quote(name, safe='')}")
        except ExecError as exc:
            if "no saved search" in str(exc):
                return False
            raise
        return True

    def run(self, name: str, qargs: dict[str, str | None]) -> dict[str, Any]:
        qs = urllib.parse.urlencode({k: v for k, v in qargs.items() if v})
        return _http(self.s, "GET", f"/api/searches/{urllib.parse.quote(name, safe='')}/run?{qs}")


@contextlib.contextmanager
def open_store(s: Settings) -> Iterator[tuple[Any, Any]]:
    """(store, warehouse or None): the local warehouse when this process can open it, else the owner's API."""
    if s.api_url:
        yield HttpStore(s), None
        return
    from pipeline.warehouse.client import open_client
    from pipeline.warehouse.migrations import migrate
    from pipeline.warehouse.reader import Warehouse

    try:
        migrate(open_client(s), s)  # a fresh warehouse gets the saved_searches table
    except WarehouseLockedError:
        if not is_embedded(s.effective_clickhouse_dsn):
            raise
        yield HttpStore(s), None
        return
    wh = Warehouse(s, max_workers=1)
    try:
        yield Store.for_warehouse(wh), wh
    finally:
        wh.close()
