"""Shared by the CLI and the /api/rbac route: load a user's denials and render explain / suggest."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from pipeline.rbac import risk
from pipeline.rbac.denials import Denial, denials_from_rows, denials_query, explain
from pipeline.rbac.risk import split_grantable
from pipeline.rbac.suggest import suggest, to_yaml
from pipeline.web.store import WarehouseLike, aquery, squery
from pipeline.web.timerange import TimeRange


def load_denials(wh: WarehouseLike, user: str, tr: TimeRange, clusters: list[str]) -> list[Denial]:
    sql, params = denials_query(user, tr, clusters)
    return denials_from_rows(*squery(wh, sql, params))


async def aload_denials(
    wh: WarehouseLike, user: str, tr: TimeRange, clusters: list[str], allowed: list[str] | None = None
) -> list[Denial]:
    """``allowed``: the reader's clusters (None = every cluster), see ``denials_query``."""
    sql, params = denials_query(user, tr, clusters, allowed)
    return denials_from_rows(*await aquery(wh, sql, params))


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(user: str, tr: TimeRange, clusters: list[str], denials: list[Denial]) -> dict[str, Any]:
    """The JSON answer: explanation groups plus the suggested YAML."""
    groups = explain(denials)
    grantable, refused = split_grantable(denials)
    objects = suggest(grantable, user)
    header = (
        f"kaudit rbac suggest for {user} ({tr.label}"
        + (f", cluster {', '.join(clusters)}" if clusters else "")
        + f"): allows exactly {sum(d.requests for d in grantable)} denied request(s) of "
        f"{len(explain(grantable))} kind(s).\n" + review_lines(objects, refused)
    )
    return {
        "user": user,
        "range": {"from_us": tr.from_us, "to_us": tr.to_us, "label": tr.label},
        "clusters": clusters,
        "requests": sum(d.requests for d in denials),
        "groups": [g.as_dict() for g in groups],
        "yaml": to_yaml(objects, header) if objects else "",
        "warnings": risk.warnings(objects),
        "refused": [{"denial": dataclasses.asdict(d), "why": why} for d, why in refused],
        # the denials themselves, for `rbac suggest --existing` on the client side
        "denials": [dataclasses.asdict(d) for d in denials],
        "query": (
            f"responsestatus_code=403 and (impersonated_username={_q(user)} or "
            f"(impersonated_username is empty and username={_q(user)}))"
        ),
    }


def denials_of(rep: dict[str, Any]) -> list[Denial]:
    """The Denial objects of a report built by ``build`` (also one received from the API)."""
    fields = {f.name for f in dataclasses.fields(Denial)}
    return [Denial(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})
            for d in rep.get("denials") or []]  # fmt: skip


def with_existing(rep: dict[str, Any], existing: Any, source: str) -> dict[str, Any]:
    """The report with its suggestion cut to what ``existing`` (pipeline.rbac.existing.Existing) lacks."""
    from pipeline.rbac.existing import missing

    user = rep["user"]
    denials = denials_of(rep)
    groups = sorted({g for d in denials for g in d.user_groups})
    todo, covered = missing(denials, existing, user, groups)
    lines = [
        f"kaudit rbac suggest for {user} ({rep['range']['label']}) against the RBAC in {source}:",
        f"{sum(d.requests for d in todo)} denied request(s) need new rules; "
        f"{sum(d.requests for d, _ in covered)} are allowed by what exists now:",
    ]
    for d, by in covered[:20]:
        what = d.path or (d.rbac_resource + (f" {d.name}" if d.name else ""))
        lines.append(f"  {d.verb} {what}{' in ' + d.namespace if d.namespace else ''} <- {by}")
    if len(covered) > 20:
        lines.append(f"  ... and {len(covered) - 20} more")
    todo, refused = split_grantable(todo)
    objects = suggest(todo, user)
    lines.append(review_lines(objects, refused))
    out = dict(rep)
    out["yaml"] = to_yaml(objects, "\n".join(lines)) if objects else ""
    out["warnings"] = risk.warnings(objects)
    out["refused"] = [{"denial": dataclasses.asdict(d), "why": why} for d, why in refused]
    out["already_allowed"] = [{"denial": dataclasses.asdict(d), "by": by} for d, by in covered]
    out["missing_requests"] = sum(d.requests for d in todo)
    return out


def review_lines(objects: list[dict[str, Any]], refused: list[tuple[Denial, str]]) -> str:
    """The header's end: what was left out and why, what the grants lead to, how to check before applying."""
    lines = []
    for d, why in refused[:20]:
        lines.append(f"NOT GRANTED: {d.requests} request(s) {d.verb} {d.path or d.rbac_resource}: {why}")
    if len(refused) > 20:
        lines.append(f"NOT GRANTED: ... and {len(refused) - 20} more")
    lines += [f"WARNING: {w}" for w in risk.warnings(objects)]
    lines.append("Review before applying: kubectl apply --dry-run=client -f <file>")
    return "\n".join(lines)


def _q(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def explain_text(report: dict[str, Any]) -> str:
    """A table for people: one line per (verb, group, resource, subresource, namespace)."""
    groups = report["groups"]
    if not groups:
        return f"no denied (403) requests for {report['user']} in {report['range']['label']}\n"
    head = ("REQUESTS", "VERB", "API GROUP", "RESOURCE", "NAMESPACE", "FIRST SEEN", "LAST SEEN", "REASON")
    rows = []
    for g in groups:
        res = g["resource"] + (f"/{g['subresource']}" if g["subresource"] else "")
        if not res:
            res = ",".join(g["paths"]) or "(non-resource)"
        elif g["names"]:
            res += " [" + ",".join(g["names"][:3]) + (",…" if len(g["names"]) > 3 else "") + "]"
        rows.append(
            (
                str(g["requests"]),
                g["verb"],
                g["apigroup"] or "core",
                res,
                g["namespace"] or "(cluster)",
                iso(g["first_us"]),
                iso(g["last_us"]),
                (g["reason"] or "")[:120],
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [
        f"{report['requests']} denied request(s) of {report['user']} in {report['range']['label']}:",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"
