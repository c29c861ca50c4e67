"""pydantic models of audit.k8s.io Event/EventList (v1, v1beta1, v1alpha1) and the normalized flat record.

The wire models keep unknown fields (``extra="allow"``): new Kubernetes releases add fields and an
unknown key must never make an event fail. The hot paths (worker, bridge) normalize plain dicts with
``pipeline.models.normalize`` for speed; these models define and document the shapes and are used to
validate whole batches at once where a typed view is wanted.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class UserInfo(_Open):
    username: str | None = None
    uid: str | None = None
    groups: list[str] | None = None
    extra: dict[str, list[str]] | None = None


class ObjectReference(_Open):
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    apiGroup: str | None = None
    apiVersion: str | None = None
    resourceVersion: str | None = None
    subresource: str | None = None


class ResponseStatus(_Open):
    status: str | None = None
    message: str | None = None
    reason: str | None = None
    code: int | None = None
    details: dict[str, Any] | None = None


class Event(_Open):
    """One audit event as any API server version writes it."""

    kind: str | None = None
    apiVersion: str | None = None
    level: str | None = None
    auditID: str
    stage: str
    requestURI: str | None = None
    verb: str | None = None
    user: UserInfo = Field(default_factory=UserInfo)
    impersonatedUser: UserInfo | None = None
    sourceIPs: list[str] | None = None
    userAgent: str | None = None
    objectRef: ObjectReference | None = None
    responseStatus: ResponseStatus | None = None
    requestObject: Any = None
    responseObject: Any = None
    requestReceivedTimestamp: str | None = None
    stageTimestamp: str | None = None
    annotations: dict[str, str] | None = None
    # v1beta1 only: second-resolution timestamps (the only ones before Kubernetes 1.9)
    timestamp: str | None = None
    metadata: dict[str, Any] | None = None


class EventList(_Open):
    kind: str | None = "EventList"
    apiVersion: str | None = None
    metadata: dict[str, Any] | None = None
    items: list[Event] = Field(default_factory=list)


class NormalizedEvent(BaseModel):
    """The flat record stored in Kafka (Avro) and ClickHouse; field names follow the query language."""

    model_config = ConfigDict(extra="forbid")

    cluster: str
    auditid: str
    stage: str
    level: str = ""
    verb: str = ""
    request_uri: str = ""
    username: str = ""
    useruid: str = ""
    usergroups: list[str] = []
    user_extra: dict[str, str] = {}
    impersonated_username: str = ""
    impersonated_groups: list[str] = []
    sourceips: list[str] = []
    useragent: str = ""
    objectref_resource: str = ""
    objectref_namespace: str = ""
    objectref_name: str = ""
    objectref_apigroup: str = ""
    objectref_apiversion: str = ""
    objectref_subresource: str = ""
    objectref_uid: str = ""
    responsestatus_code: int = 0
    responsestatus_status: str = ""
    responsestatus_reason: str = ""
    responsestatus_message: str = ""
    decision: str = ""
    decision_reason: str = ""
    annotations: dict[str, str] = {}
    request_received_ts: int  # microseconds since the epoch, UTC
    stage_ts: int  # microseconds since the epoch, UTC
    request_object: str = ""  # raw JSON text ("" when absent)
    response_object: str = ""
    objects_truncated: bool = False
    event_version: str = ""  # audit.k8s.io/v1, v1beta1, ...
    extra: str = ""  # unknown top-level fields as a JSON object text ("" when none)
    redacted: list[str] = []  # ids of the credential fields replaced by hashes (pipeline/redaction/model.py)
    impersonation_constraint: str = ""  # 1.35+ authenticationMetadata.impersonationConstraint
    authorization_verb: str = ""  # 403: the authorizer verb the Forbidden message names
    event_bytes: int = 0  # the event's compact JSON length as received (normalize.event_size)
