"""pipeline.agents.csr: the subject of a CSR's PKCS#10 request, decoded as Go's crypto/x509 reads it, and nothing
(never an exception) from anything malformed."""

from __future__ import annotations

import base64

import pytest

from pipeline.agents import csr
from pipeline.agents.conditions import EventView, compile_condition
from pipeline.agents.rules import example_event, load_rules
from pipeline.models.normalize import normalize_event

CN, ORG = b"\x55\x04\x03", b"\x55\x04\x0a"


def tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    head = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + head + body


def attr(oid: bytes, value: str, tag: int = 0x0C) -> bytes:
    enc = {0x0C: "utf-8", 0x13: "latin-1", 0x1E: "utf-16-be", 0x1C: "utf-32-be"}[tag]
    return tlv(0x30, tlv(0x06, oid) + tlv(tag, value.encode(enc)))


def request(*rdns: bytes) -> bytes:
    """A CertificationRequest DER whose subject holds these RDNs (each a SET of attributes); no key, no signature:
    the walker reads only the subject."""
    name = tlv(0x30, b"".join(tlv(0x31, r) for r in rdns))
    info = tlv(0x30, tlv(0x02, b"\x00") + name + tlv(0x30, b"") + tlv(0xA0, b""))
    return tlv(0x30, info + tlv(0x30, b"") + tlv(0x03, b"\x00"))


def pem(der: bytes) -> str:
    b64 = base64.b64encode(der).decode()
    text = "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return base64.b64encode((text + "\n-----END CERTIFICATE REQUEST-----\n").encode()).decode()


def test_subject_as_go_reads_it():
    der = request(attr(ORG, "system:masters", 0x1E), attr(ORG, "dev", 0x13) + attr(CN, "first"), attr(CN, "last", 0x1C))
    # BMPString and UniversalString decoded, a multi-valued RDN read whole, the last CN wins (pkix.Name)
    assert csr.requested_subject({"spec": {"request": pem(der)}}) == ("last", ["system:masters", "dev"])
    # a long-form length (a subject over 127 bytes) and attributes of other types are skipped
    long = request(attr(b"\x55\x04\x0b", "x" * 300), attr(ORG, "ops"))
    assert csr.requested_subject({"spec": {"request": pem(long)}}) == ("", ["ops"])


@pytest.mark.parametrize(
    "request_text",
    [
        "", "not base64!", base64.b64encode(b"no pem here").decode(),
        pem(b""), pem(b"\x30\x84\xff\xff\xff\xff"), pem(b"\x30\x85\x01\x01\x01\x01\x01"),
        pem(request(attr(ORG, "a"))[:-20]),  # truncated
        pem(tlv(0x30, tlv(0x30, tlv(0x02, b"\x00") + tlv(0x31, b"")))),  # subject not a SEQUENCE
        pem(request(tlv(0x30, tlv(0x06, ORG) + tlv(0x0C, b"\xff\xfe")))),  # invalid UTF-8
        pem(request(tlv(0x30, tlv(0x06, ORG) + b"\x0c\x7f")))  # value longer than its attribute
    ],
)  # fmt: skip
def test_malformed_requests_have_no_subject(request_text):
    assert csr.requested_subject({"spec": {"request": request_text}}) is None


def test_rule_reads_the_decoded_subject_from_the_stored_text():
    body = {"spec": {"request": pem(request(attr(ORG, "system:masters", 0x1E), attr(CN, "m")))}}
    raw = example_event({"verb": "create", "user": {"username": "mallory"}, "requestObject": body,
                         "objectRef": {"resource": "certificatesigningrequests", "apiGroup": "certificates.k8s.io"}})  # fmt: skip
    ev = normalize_event(raw, "c")
    masters = compile_condition({"csr_organizations": {"in": ["system:masters"]}, "csr_common_name": "m"}, "t")
    assert masters(EventView(ev)) and masters(EventView(ev, raw))
    raw["objectRef"]["resource"] = "configmaps"  # the same body on another kind is not a CSR
    assert not masters(EventView(normalize_event(raw, "c"), raw))
    assert any(r.id == "csr-privileged-subject" and r.severity == "critical" for r in load_rules())
