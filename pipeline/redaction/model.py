"""The redaction model: which fields of which objects carry credentials. One table, read by the Python
implementation (``pipeline.redaction.redact``) and mirrored by the native one (``native/src/redact.rs``; a test
compares ``kaudit_native.redaction_table()`` with ``table()`` below, and both paths byte for byte).

An object in an audit event is redacted by its **kind**: its own ``kind`` when it names a credential kind
(``KINDS``), else the kind the event's (API group, resource, subresource) implies (``RESOURCES``): patch bodies
(no kind, or any kind a client wrote into a patch), kind-less list items, metadata-only objects
(``PartialObjectMetadata``), ``as=Table`` rows. Only the API's envelopes (``NOT_IMPLIED``: a ``Status``, whose
``status`` is a word, ``DeleteOptions``, ``Table``, ``WatchEvent``) are never read as the implied kind.
Lists (``SecretList``, ``List``, ``PartialObjectMetadataList``, kind-less ``items``), ``Table`` rows and
``WatchEvent`` objects are walked item by item; a JSON patch (a list of operations) sent to such a resource has
each operation's ``value`` redacted as the part of the object its ``path`` points at. The verb needs no entry:
every verb's bodies are objects, lists or patches of the resource, and are told apart by their shape.

Credential values become ``sha256:<first 16 hex digits of SHA-256>`` of the value (its UTF-8 text, or for any
other JSON value its compact JSON), so equal values can still be correlated. An ``embedded`` field holds the JSON
text of a whole object (``kubectl.kubernetes.io/last-applied-configuration``): it is parsed and redacted by the
same model (and re-serialized compactly), or hashed whole when it is not a JSON object. An event that had
anything redacted lists the fields' ids (``FIELD_IDS`` order) in its ``redacted`` column.

Not credentials (deliberately not redacted): ConfigMaps, Pod env values, CertificateSigningRequests (a CSR and
an issued certificate are public), ``caBundle`` fields, SelfSubjectReview / SubjectAccessReview results, managed
fields (they hold data keys, not values), Secret data keys and types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
ANY = "*"  # every key of a map


@dataclass(frozen=True)
class Field:
    """A credential-bearing field of a kind: a path of keys (``ANY`` = every key of a map)."""

    id: str
    path: tuple[str, ...]
    embedded: bool = False  # the value is the JSON text of an object: redacted inside, by this model


@dataclass(frozen=True)
class Kind:
    name: str
    fields: tuple[Field, ...]

    @property
    def patch_id(self) -> str:
        """Recorded when a JSON patch operation sent to this kind is unreadable (its value is hashed whole)."""
        return f"{self.name}.patch"


@dataclass(frozen=True)
class Resource:
    """What a kind-less object of an event on this resource is."""

    group: str | None  # None: any API group
    resource: str
    subresource: str
    kind: str


def _last_applied(kind: str) -> Field:
    return Field(f"{kind}.last-applied", ("metadata", "annotations", LAST_APPLIED), embedded=True)


KINDS: tuple[Kind, ...] = (
    # Secret values, base64 in data and plain in stringData; every Secret type (opaque, service-account-token,
    # bootstrap.kubernetes.io/token, dockerconfigjson, tls, helm releases, ...) keeps its values there.
    Kind("Secret", (Field("Secret.data", ("data", ANY)), Field("Secret.stringData", ("stringData", ANY)),
                    _last_applied("Secret"))),
    # serviceaccounts/token (kubectl create token, kubelet's projected tokens): the issued token
    Kind("TokenRequest", (Field("TokenRequest.status.token", ("status", "token")), _last_applied("TokenRequest"))),
    # tokens submitted for review (webhook authenticators, kube-rbac-proxy, metrics-server...); the response
    # echoes the spec
    Kind("TokenReview", (Field("TokenReview.spec.token", ("spec", "token")), _last_applied("TokenReview"))),
)  # fmt: skip

RESOURCES: tuple[Resource, ...] = (
    Resource(None, "secrets", "", "Secret"),
    Resource("", "serviceaccounts", "token", "TokenRequest"),
    Resource("authentication.k8s.io", "tokenreviews", "", "TokenReview"),
)

# Kinds whose objects hold other objects: list items / table rows / a watch event's object.
GENERIC_LIST = "List"
TABLE = "Table"
WATCH_EVENT = "WatchEvent"
# The API's own envelopes: never read as the kind an event implies (any other kind, or none, is).
NOT_IMPLIED: tuple[str, ...] = ("Status", "DeleteOptions", TABLE, WATCH_EVENT)

FIELD_IDS: tuple[str, ...] = tuple(x for k in KINDS for x in (*(f.id for f in k.fields), k.patch_id))
KIND_BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}


def implied_kind(group: str, resource: str, subresource: str) -> Kind | None:
    """The credential kind an event's kind-less objects are, or None."""
    for r in RESOURCES:
        if r.resource == resource and r.subresource == subresource and (r.group is None or r.group == group):
            return KIND_BY_NAME[r.kind]
    return None


def table() -> dict[str, Any]:
    """The model as plain data (the native module returns the same from ``redaction_table()``)."""
    return {
        "field_ids": list(FIELD_IDS),
        "kinds": [
            {"name": k.name, "patch_id": k.patch_id,
             "fields": [{"id": f.id, "path": list(f.path), "embedded": f.embedded} for f in k.fields]}
            for k in KINDS
        ],
        "resources": [{"group": r.group, "resource": r.resource, "subresource": r.subresource, "kind": r.kind}
                      for r in RESOURCES],
        "containers": {"not_implied": list(NOT_IMPLIED), "list": GENERIC_LIST, "table": TABLE, "watch": WATCH_EVENT},
    }  # fmt: skip
