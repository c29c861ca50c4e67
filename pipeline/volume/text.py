"""The text form of a volume report (``kaudit volume``)."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.volume import Report, human_bytes, pct

BARS = " ▁▂▃▄▅▆▇█"


def _t(s: int) -> str:
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%d %H:%M")


def spark(values: list[int]) -> str:
    top = max(values, default=0)
    if not top:
        return ""
    return "".join(BARS[min(8, round(8 * v / top))] for v in values)


def render(rep: Report) -> str:
    t, w = rep.totals, rep.window
    where = ", ".join(w.clusters) if w.clusters else "all clusters"
    out = [f"Audit volume, {where}, {_t(w.from_s)} .. {_t(w.to_s)} UTC (hourly rollup)"]
    if not t.events:
        out.append("no events in this window")
        return "\n".join(out)
    ch = rep.cost.of(t.events, t.object_bytes)
    where_ch = (f"about {human_bytes(ch)} in ClickHouse (compressed)" if rep.cost.compressed
                else "ClickHouse cost unknown (system tables not readable through the query API)")  # fmt: skip
    out.append(
        f"{t.events:,} events, {human_bytes(t.bytes)} as JSON (avg {human_bytes(t.bytes / t.events)} per event, "
        f"{pct(t.object_bytes / t.bytes if t.bytes else 0)} of it request/response objects); {where_ch}"
    )
    out += ["", f"Headline: {rep.headline}", "", "Where it comes from:"]
    width = max(len(c.key["label"]) for c in rep.categories)
    for c in rep.categories:
        out.append(f"  {c.key['label']:<{width}}  {pct(c.share_events):>5} of events  {pct(c.share_bytes):>5} of bytes"
                   f"  {c.events:>12,} events  {human_bytes(c.bytes):>10}  users {c.users}")  # fmt: skip
    out += ["", f"Top {len(rep.top)} by {','.join(rep.by)}:"]
    head = [*rep.by, "events", "%ev", "bytes", "%bytes", "clickhouse"]
    rows = [[str(g.key[b]) if g.key[b] != "" else "-" for b in rep.by]
            + [f"{g.events:,}", pct(g.share_events), human_bytes(g.bytes), pct(g.share_bytes), human_bytes(g.ch_bytes)]
            for g in rep.top]  # fmt: skip
    widths = [min(60, max(len(h), *(len(r[i]) for r in rows))) if rows else len(h) for i, h in enumerate(head)]
    out.append("  " + "  ".join(h.ljust(widths[i]) for i, h in enumerate(head)))
    for r in rows:
        out.append("  " + "  ".join(v[: widths[i]].ljust(widths[i]) for i, v in enumerate(r)))
    if len(rep.series) > 1:
        out += ["", f"Events per hour: {spark([e for _, e, _ in rep.series])}  (max {max(e for _, e, _ in rep.series):,})"]
    return "\n".join(out)
